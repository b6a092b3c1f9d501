"""A private OpenSSH server on 127.0.0.1 for tests that need a real SSH host.

Tests of an SSH client are only convincing against a real ``sshd``: a mock cannot tell whether
host keys are checked, whether twenty channels fit on one connection or what happens when the
connection dies mid-task. :func:`start_sshd` runs ``/usr/sbin/sshd`` in the foreground as a
child of the test process, with its own host key, client key, config and log in a directory
the caller owns, on a free loopback port. Nothing of the machine's own SSH set-up is read or
changed, except that keyboard-interactive servers need a local test account (see below).

Two kinds of server:

* public key (default): the login user is the user running the tests (root logs in by key
  only). TCP forwarding is allowed, so a ProxyJump through the server to itself works, sftp
  is served in-process (``internal-sftp``) and one connection may carry 100 sessions.
* keyboard-interactive (``keyboard_interactive=True``, root only): PAM asks for the password
  of the dedicated account ``rmtest``, which is created if missing and given a random
  password (:attr:`SSHServer.password`); public-key logins are refused.

Client side: :attr:`SSHServer.home` is a throw-away home directory whose ``.ssh`` holds a
``config`` with a ``Host`` alias (:attr:`SSHServer.alias`), a copy of the client key and a
``known_hosts`` file; the config uses absolute paths only. paramiko reads it with
``SSHConfig.from_path(home / ".ssh" / "config")``. Gotcha: the OpenSSH client finds
``~/.ssh/config`` through the passwd database, not ``$HOME``, so ``HOME=<home> ssh ALIAS``
does not see the alias; pass the file explicitly: ``ssh -F <home>/.ssh/config ALIAS``.
ProxyJump hops started by ssh inherit that ``-F``.

Other things found out the hard way, so that nobody has to again:

* sshd must be started by absolute path: it re-executes itself for every connection.
* Run by root it needs the privilege-separation directory ``/run/sshd``; run by another user it
  can only log in that same user, and only with ``UsePAM no``.
* With ``UsePAM no`` sshd refuses accounts whose ``/etc/shadow`` password is ``!`` (locked,
  which is what a bare ``useradd`` leaves), even for key logins; system accounts such as
  ``nobody`` are refused as "locked" too, so run the tests as a real user.
* ``StrictModes no``: key files under a temporary directory are accepted whatever their
  modes. sshd reads ``AuthorizedKeysFile`` as the target user, who must be able to read it.
* Host keys are checked: ``known_hosts`` holds the line ``[127.0.0.1]:PORT <key>``, the form
  both OpenSSH and paramiko look up for a port other than 22. The server has host keys of
  three types (ed25519, ecdsa-sha2-nistp256, ssh-rsa), as real servers do, but ``known_hosts``
  holds only the ed25519 one; :meth:`SSHServer.known_hosts_line` gives the line for any type,
  so a test can trust the server by a type its client would not pick first.
* Choosing a free port and handing it to sshd is racy, so a start that loses the race is
  retried on another port. The server counts as up once *its own* log says it listens.
* Remote commands get sshd's default ``PATH`` plus what the login shell's startup files add,
  never the caller's: a virtualenv of the test process is not on it.

Example: make the fixtures visible with ``pytest_plugins = ["remote_magic.testing.sshd"]`` in
the top-level ``conftest.py`` (or import them there, not in the test module, where a test's
argument of the same name would shadow the import - ruff F811), then::

    def test_echo(sshd_server):
        client = paramiko.SSHClient()
        client.load_host_keys(str(sshd_server.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(sshd_server.host, port=sshd_server.port, username=sshd_server.user,
                       key_filename=str(sshd_server.key_path), look_for_keys=False,
                       allow_agent=False)

Linux only (``/proc`` is used to find the per-connection processes). Requires the Debian
packages openssh-server and openssh-client; ``scripts/system-deps.sh`` installs them.
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

try:  # pytest is a test dependency only; start_sshd() works without it.
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

__all__ = ["TEST_USER", "SSHServer", "start_sshd", "sshd_kbd_server", "sshd_server"]

HOST = "127.0.0.1"
TEST_USER = "rmtest"
"""Account logged in by keyboard-interactive servers (created when running as root)."""

START_TIMEOUT = 10.0
_ATTEMPTS = 5
_STATE_DIR = Path("/run/remote_magic-testing")  # root-only: test user's password, lock
_ACCEPTED = re.compile(r"\bAccepted [\w/-]+ for ")
# ssh-keygen -t name -> its extra arguments; one host key of each type (RSA kept small: quick)
_HOST_KEY_TYPES = {"ed25519": (), "ecdsa": ("-b", "256"), "rsa": ("-b", "2048")}


@dataclass
class SSHServer:
    """A running private sshd and everything a client needs to reach it.

    The fields are plain paths and strings so that tests can hand them to paramiko, to the
    OpenSSH client or to code under test without going through this class.
    """

    host: str
    port: int
    user: str
    key_path: Path
    """Client private key (ed25519, no passphrase); accepted for ``user`` by key servers."""
    known_hosts: Path
    """The server's ed25519 host key as ``[127.0.0.1]:PORT ssh-ed25519 <key>``."""
    log_path: Path
    """sshd's own log (LogLevel VERBOSE), one ``Accepted ... for`` line per login."""
    home: Path
    """Client HOME whose ``.ssh`` holds ``config`` (``alias``), ``id_ed25519``, ``known_hosts``."""
    alias: str
    """``Host`` alias in ``home/.ssh/config`` that reaches this server as ``user``."""
    password: str | None
    """``user``'s password on keyboard-interactive servers, otherwise None."""
    pid: int
    """Pid of the listening sshd; each connection is served by a child of it."""
    host_keys: dict[str, str] = field(default_factory=dict)
    """Every host key the server offers: key type -> base64 public key."""
    host_certificates: dict[str, Path] = field(default_factory=dict)
    """Host certificates it serves (only with ``host_ca``): key type -> ``-cert.pub`` file."""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def known_hosts_line(self, kind: str) -> str:
        """The known_hosts line trusting this server's host key of type ``kind``."""
        return f"[{self.host}]:{self.port} {kind} {self.host_keys[kind]}\n"

    @property
    def ssh_config(self) -> Path:
        """``home/.ssh/config``, to pass as ``ssh -F`` (see the module docstring for why)."""
        return self.home / ".ssh" / "config"

    def _client_options(self) -> list[str]:
        return ["-i", str(self.key_path), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]

    def ssh_args(self) -> list[str]:
        """OpenSSH client argv up to the remote command: ``ssh_args() + ["hostname"]``.

        ``-F /dev/null`` keeps the caller's and the system's ssh config out of the test, and
        ``BatchMode`` makes a failing login fail at once instead of prompting.
        """
        return ["ssh", "-F", "/dev/null", "-p", str(self.port), *self._client_options(),
                f"{self.user}@{self.host}"]

    def scp_args(self) -> list[str]:
        """scp argv without the operands; a remote operand is ``f"{user}@{host}:PATH"``."""
        return ["scp", "-F", "/dev/null", "-P", str(self.port), *self._client_options()]

    def accepted_logins(self) -> int:
        """How many logins sshd has accepted so far, counted in its log.

        Lets a test prove that connections are reused (or not) without instrumenting the
        client: each authenticated connection logs exactly one ``Accepted <method> for`` line.
        """
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return sum(1 for line in text.splitlines() if _ACCEPTED.search(line))

    def session_pids(self) -> list[int]:
        """Pids of the sshd processes serving this server's open connections, one each.

        These are the listener's direct children: for a root login the session process
        itself, for other users the privileged monitor, which passes SIGTERM on to the session
        process. Either way one SIGTERM drops that connection, which is how a test cuts a
        connection mid-task. A connection still authenticating is listed too.
        """
        return sorted(pid for pid, ppid, state in _processes()
                      if ppid == self.pid and state != "Z")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the listener and every connection it serves; safe to call more than once.

        sshd keeps established connections alive when its listener exits, so they are
        terminated explicitly; whatever ignores SIGTERM for ``timeout`` seconds is killed.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        # Look before the listener exits: its orphaned children stop being its children.
        # Every sshd below it gets the signal: an unauthenticated connection's [net] process
        # does not notice that its monitor is gone until the client speaks.
        lingering = _sshd_descendants(self.pid)
        if proc.poll() is None:
            proc.terminate()
        for pid in lingering:
            _signal(pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        deadline = time.monotonic() + timeout
        while (lingering := [p for p in lingering if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid in lingering:
            _signal(pid, signal.SIGKILL)

    def __enter__(self) -> SSHServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_sshd(directory: Path | str, *, keyboard_interactive: bool = False,
               alias: str | None = None, port: int | None = None,
               host_ca: Path | str | None = None, host_principals: str = HOST,
               host_cert_validity: str | None = None,
               user_ca: Path | str | None = None, max_sessions: int = 100) -> SSHServer:
    """Start a private sshd on a free 127.0.0.1 port; its files go into ``directory``.

    Returns once the server accepts connections. Stop it with :meth:`SSHServer.stop` (or use
    it as a context manager); a server still running when Python exits is stopped then.

    With ``keyboard_interactive`` the server only accepts PAM keyboard-interactive logins of
    :data:`TEST_USER`, which needs root (to create the account and set its password):
    otherwise :class:`RuntimeError` is raised. ``alias`` names the client config's ``Host``
    entry (default ``sshd-test`` or ``sshd-test-kbd``).

    ``port`` brings a stopped server back where its clients expect it: the same ``directory``
    keeps its host and client keys, so ``known_hosts`` still matches (the port is tried again
    for a few seconds, in case a test's own listener on it is just closing).

    ``host_ca`` (a private key file) makes the server present host certificates, as sites
    that list their CA with ``@cert-authority`` in known_hosts do: each host key is signed
    with ``ssh-keygen -s host_ca -h -n host_principals`` (comma-separated names; empty for a
    certificate that names no host) and ``-V host_cert_validity`` when given (such as
    ``-1d:-1h``, an expired one), and served with ``HostCertificate``.

    ``user_ca`` (a public key file) is trusted to certify user keys (``TrustedUserCAKeys``):
    a key signed by it for the login user's name logs in without being in authorized_keys.

    ``max_sessions`` is sshd's MaxSessions: the sessions one connection may carry at once
    (sshd's own default is 10; the fixture allows many).
    """
    root = os.geteuid() == 0
    if keyboard_interactive and not root:
        raise RuntimeError(
            "a keyboard-interactive test sshd needs root: it logs in the local account "
            f"{TEST_USER!r}, which it creates if needed and whose password it sets")
    sshd = _program("sshd")
    keygen = _program("ssh-keygen")
    d = Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    client_key = d / "id_ed25519"
    for key, kind in [(client_key, "ed25519"),
                      *((d / f"ssh_host_{kind}_key", kind) for kind in _HOST_KEY_TYPES)]:
        if not key.exists():
            subprocess.run([keygen, "-q", "-t", kind, *_HOST_KEY_TYPES.get(kind, ()), "-N", "",
                            "-C", f"sshd-test {key.name}", "-f", str(key)],
                           check=True, stdin=subprocess.DEVNULL)
    password = None
    if keyboard_interactive:
        user, password = TEST_USER, _prepare_test_user(TEST_USER)
    else:
        user = pwd.getpwuid(os.geteuid()).pw_name
        (d / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
    if root:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    certificates = {} if host_ca is None else _certify_host_keys(
        keygen, d, Path(host_ca), host_principals, host_cert_validity)
    config, log_path = d / "sshd_config", d / "sshd.log"
    proc = None
    wanted = port
    for attempt in range(_ATTEMPTS):
        if wanted is None:
            port = _free_port()
        elif attempt:
            time.sleep(0.5)
        config.write_text(_server_config(d, port, user, keyboard_interactive,
                                         list(certificates.values()), user_ca,
                                         max_sessions))
        if attempt == 0:  # a config error would make every attempt fail: report it at once
            check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True,
                                   text=True, stdin=subprocess.DEVNULL)
            if check.returncode:
                raise RuntimeError(f"sshd rejects {config}: {check.stderr.strip()}")
        proc = _launch(sshd, config, log_path, port)
        if proc is not None:
            break
    if proc is None or port is None:
        raise RuntimeError(f"sshd did not start after {_ATTEMPTS} attempts:\n"
                           + _tail(log_path))

    host_keys = dict(
        (d / f"ssh_host_{kind}_key.pub").read_text().split()[:2] for kind in _HOST_KEY_TYPES)
    known_hosts = d / "known_hosts"
    known_hosts.write_text(f"[{HOST}]:{port} ssh-ed25519 {host_keys['ssh-ed25519']}\n")
    alias = alias or ("sshd-test-kbd" if keyboard_interactive else "sshd-test")
    home = _client_home(d / "home", alias, port, user, client_key, known_hosts,
                        batch=not keyboard_interactive)
    server = SSHServer(host=HOST, port=port, user=user, key_path=client_key,
                       known_hosts=known_hosts, log_path=log_path, home=home, alias=alias,
                       password=password, pid=proc.pid, host_keys=host_keys,
                       host_certificates=certificates, _proc=proc)
    atexit.register(server.stop)
    return server


if pytest is not None:

    @pytest.fixture(scope="session")
    def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
        """A public-key sshd shared by the whole test session (login user: the current one)."""
        with start_sshd(tmp_path_factory.mktemp("sshd")) as server:
            yield server

    @pytest.fixture(scope="session")
    def sshd_kbd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
        """A keyboard-interactive (PAM password) sshd for the session; raises unless root."""
        with start_sshd(tmp_path_factory.mktemp("sshd-kbd"), keyboard_interactive=True) as server:
            yield server


# --- server ---------------------------------------------------------------------------------


def _program(name: str) -> str:
    """Absolute path of an OpenSSH program; sbin is searched too, as it is often off PATH."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    found = shutil.which(name, path=search)
    if found is None:
        raise RuntimeError(f"{name} not found: install openssh-server and openssh-client "
                           "(scripts/system-deps.sh does)")
    return os.path.abspath(found)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _certify_host_keys(keygen: str, d: Path, ca: Path, principals: str,
                       validity: str | None) -> dict[str, Path]:
    """Sign every host key with ``ca``: key type -> certificate file (signed anew each start,
    so that a restarted server serves what its caller asked for this time)."""
    names = ["-n", principals] if principals else []
    certificates = {}
    for kind in _HOST_KEY_TYPES:
        key = d / f"ssh_host_{kind}_key.pub"
        subprocess.run([keygen, "-q", "-s", str(ca), "-h", "-I", f"sshd-test {kind}", *names,
                        *(["-V", validity] if validity else []), str(key)],
                       check=True, stdin=subprocess.DEVNULL, capture_output=True)
        certificates[key.read_text().split()[0]] = key.with_name(f"ssh_host_{kind}_key-cert.pub")
    return certificates


def _server_config(d: Path, port: int, user: str, keyboard_interactive: bool,
                   certificates: list[Path] | None = None,
                   user_ca: Path | str | None = None, max_sessions: int = 100) -> str:
    common = [
        f"Port {port}",
        f"ListenAddress {HOST}",
        *(f"HostKey {d / f'ssh_host_{kind}_key'}" for kind in _HOST_KEY_TYPES),
        *(f"HostCertificate {path}" for path in certificates or ()),
        f"PidFile {d / 'sshd.pid'}",
        f"AllowUsers {user}",
        "LogLevel VERBOSE",
        "StrictModes no",
        "AllowTcpForwarding yes",
        f"MaxSessions {max_sessions}",
        "MaxStartups 200",
        "Subsystem sftp internal-sftp",
    ]
    if keyboard_interactive:
        auth = [
            "UsePAM yes",
            "KbdInteractiveAuthentication yes",
            "PasswordAuthentication no",
            "PubkeyAuthentication no",
            "AuthenticationMethods keyboard-interactive",
            "PermitRootLogin no",
            # PAM prints the motd and last login itself; keep the session quiet.
            "PrintMotd no",
            "PrintLastLog no",
        ]
    else:
        auth = [
            "UsePAM no",
            "PubkeyAuthentication yes",
            f"AuthorizedKeysFile {d / 'authorized_keys'}",
            *([f"TrustedUserCAKeys {Path(user_ca).resolve()}"] if user_ca else []),
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
        ]
    return "\n".join(common + auth) + "\n"


def _launch(sshd: str, config: Path, log_path: Path, port: int) -> subprocess.Popen[bytes] | None:
    """Run sshd in the foreground; None if it lost the port or did not come up in time."""
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    listening = f"Server listening on {HOST} port {port}.".encode()
    deadline = time.monotonic() + START_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        # Success is read from sshd's own log, not from a connect(): if another process won
        # the race for the port, a connect would reach that process. sshd logs the line once
        # it listens, so connections are accepted from then on.
        with open(log_path, "rb") as log:
            log.seek(offset)
            if listening in log.read():
                return proc
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    return None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _client_home(home: Path, alias: str, port: int, user: str, key: Path, known_hosts: Path,
                 batch: bool) -> Path:
    ssh = home / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    ssh.chmod(0o700)
    for name in ("id_ed25519", "id_ed25519.pub"):
        shutil.copyfile(key.with_name(name), ssh / name)
    (ssh / "id_ed25519").chmod(0o600)
    shutil.copyfile(known_hosts, ssh / "known_hosts")
    lines = [
        f"Host {alias}",
        f"    HostName {HOST}",
        f"    Port {port}",
        f"    User {user}",
        # Absolute paths: OpenSSH expands "~" from the passwd entry, paramiko from $HOME.
        f"    IdentityFile {ssh / 'id_ed25519'}",
        "    IdentitiesOnly yes",
        f"    UserKnownHostsFile {ssh / 'known_hosts'}",
        "    StrictHostKeyChecking yes",
    ]
    if batch:
        lines.append("    BatchMode yes")
    config = ssh / "config"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)  # ssh refuses a config that others can write
    return home


# --- the keyboard-interactive test account ---------------------------------------------------


def _prepare_test_user(name: str) -> str:
    """Make sure account ``name`` exists with a home it owns and return its password.

    The password is random, but shared by every server started while the machine is up
    (kept in a root-only file under /run): re-randomising it for each server would lock out
    servers started earlier, e.g. by parallel pytest workers.
    """
    import fcntl  # POSIX only, like the rest of this module's root-only path

    _STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    with open(_STATE_DIR / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            _run(["useradd", "-m", "-s", "/bin/bash", "-c", "remote_magic test user", name])
            entry = pwd.getpwnam(name)
        home = Path(entry.pw_dir)
        if not home.is_dir():
            home.mkdir(mode=0o755, parents=True)
            os.chown(home, entry.pw_uid, entry.pw_gid)
        secret = _STATE_DIR / f"{name}.password"
        password = secret.read_text().strip() if secret.exists() else ""
        if not password:
            password = secrets.token_urlsafe(24)
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
        # Set it every time: it may have been changed or locked since it was stored.
        _run(["chpasswd"], stdin=f"{name}:{password}\n")
    return password


def _run(argv: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                          stdin=None if stdin is not None else subprocess.DEVNULL)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


# --- processes (/proc) -----------------------------------------------------------------------


def _processes() -> Iterator[tuple[int, int, str]]:
    """(pid, parent pid, state) of every process; nothing where there is no /proc."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so cut at the last ")"
        fields = stat[stat.rindex(b")") + 2:].split()
        yield int(name), int(fields[1]), fields[0].decode()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _sshd_descendants(pid: int) -> list[int]:
    """Live sshd processes below ``pid`` (connection monitors and their session processes)."""
    children: dict[int, list[int]] = {}
    for child, parent, state in _processes():
        if state != "Z":
            children.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        if _comm(p) == "sshd":
            found.append(p)
        todo.extend(children.get(p, []))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] != b"Z"  # a zombie is done, just not reaped


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
