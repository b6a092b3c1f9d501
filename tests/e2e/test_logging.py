"""`logging.getLogger("remote_magic")` at debug level: the steps of a login, the agent's
requests and answers, OpenSSH's questions, and never a secret (the password typed, the key
used) nor the user's data; `remote-magic --debug` shows them on stderr."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.hosts import ssh_host

from remote_magic import RemoteExecutor
from remote_magic.client.core import Client
from remote_magic.client.transport.connection import connect, resolve
from remote_magic.client.transport.openssh import connect_openssh, resolve_openssh
from remote_magic.config.hosts import HostConfig
from remote_magic.testing.sshd import start_sshd

SECRET_DATA = "the-users-own-secret-value-1234"


def _all_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


def test_a_key_login_and_requests_are_logged_without_the_key_or_the_data(
        home: Path, sshd: Any, caplog: pytest.LogCaptureFixture, ssh_transport: str) -> None:
    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(sshd, "hpc", home / "remote"))
    caplog.set_level(logging.DEBUG, logger="remote_magic")
    client = Client()
    try:
        with RemoteExecutor("hpc", client=client) as pool:
            assert pool.submit(len, SECRET_DATA).result(timeout=60) == len(SECRET_DATA)
    finally:
        client.close()
    text = _all_text(caplog)
    if ssh_transport == "paramiko":
        assert f"connecting to {sshd.user}@{sshd.host}:{sshd.port}" in text
        assert "host key accepted" in text and "logged in by publickey" in text
    else:  # the ssh command line that opens the master (the key file's name, not the key)
        assert f"opening an OpenSSH master: {shutil.which('ssh')} -p {sshd.port}" in text
    assert "request" in text and " stage " in text and "answer" in text
    key_body = "".join(Path(sshd.key_path).read_text().splitlines()[1:-1])
    for secret in (key_body[:40], key_body[-40:], SECRET_DATA):
        assert secret not in text


def test_passwords_typed_are_never_logged(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """Both transports, a PAM keyboard-interactive login: the question is logged (OpenSSH's
    through askpass), the answer nowhere."""
    server = start_sshd(tmp_path / "kbd", keyboard_interactive=True)
    caplog.set_level(logging.DEBUG, logger="remote_magic")
    try:
        def answer(text: str, echo: bool) -> str:
            return server.password

        paramiko_conn = connect(resolve(f"{server.user}@{server.host}", server.port,
                                        known_hosts=str(server.known_hosts)), answer)
        paramiko_conn.close()
        host = HostConfig(name="kbd", address=f"{server.user}@{server.host}", port=server.port,
                          known_hosts=str(server.known_hosts), transport="openssh")
        openssh_conn = connect_openssh(resolve_openssh(host), answer)
        assert openssh_conn.run("echo ok")[1] == "ok\n"
        openssh_conn.close()
    finally:
        server.stop()
    text = _all_text(caplog)
    assert "logged in by keyboard-interactive" in text
    assert "OpenSSH asks: (rmtest@127.0.0.1) Password:" in text
    assert server.password and server.password not in text


def test_cli_debug_shows_the_steps(home: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "remote_magic.cli", "--debug", "test",
                           "localhost"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "remote_magic.client.agent_client: localhost: request" in done.stderr
    assert " hello " in done.stderr and "[ok]" in done.stdout
