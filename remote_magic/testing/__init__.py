"""Fixtures for testing code that uses remote_magic.

The package itself never imports this subpackage: it exists for test suites (this project's
and its users') that need a real SSH host without touching the machine's own sshd or network.
:mod:`remote_magic.testing.sshd` starts a private OpenSSH server on a free 127.0.0.1 port and
provides the pytest fixtures ``sshd_server`` and ``sshd_kbd_server``; they are not registered
automatically, import them into a ``conftest.py`` or a test module to use them.
"""
