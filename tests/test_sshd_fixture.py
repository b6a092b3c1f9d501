"""The SSH test fixture itself: the SSH tests of the package are only as good as their server.

Each promise of :mod:`remote_magic.testing.sshd` that other tests rely on is checked here with
both paramiko and the OpenSSH client, so that a broken fixture fails here, by name, rather
than as a puzzling failure in a transport test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from remote_magic.testing import sshd as sshd_module
from remote_magic.testing.sshd import SSHServer, sshd_kbd_server, sshd_server, start_sshd

# The fixtures live in the package (for reuse) and are not auto-registered: importing them makes
# pytest see them in this module, and listing them here tells ruff the import is deliberate.
__all__ = ["sshd_kbd_server", "sshd_server"]

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="keyboard-interactive servers create a local account")


def connect(server: SSHServer, known_hosts: Path | None = None) -> paramiko.SSHClient:
    """A paramiko client that checks the host key against ``known_hosts`` and uses only our key."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or server.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(server.host, port=server.port, username=server.user,
                       key_filename=str(server.key_path), look_for_keys=False,
                       allow_agent=False, timeout=10)
    except BaseException:
        client.close()  # a refused host key leaves the connection open otherwise
        raise
    return client


def run(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    _, out, _ = client.exec_command(command, timeout=10)
    text = out.read().decode()
    return out.channel.recv_exit_status(), text


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def client(sshd_server: SSHServer) -> Iterator[paramiko.SSHClient]:
    c = connect(sshd_server)
    yield c
    c.close()


# --- public-key server -----------------------------------------------------------------------


def test_key_login_exec_and_sftp(sshd_server: SSHServer, client: paramiko.SSHClient,
                                 tmp_path: Path) -> None:
    assert sshd_server.host == "127.0.0.1"
    assert sshd_server.password is None
    assert run(client, "echo hello; exit 3") == (3, "hello\n")
    source = tmp_path / "a"
    source.write_bytes(os.urandom(100_000))
    with client.open_sftp() as sftp:
        sftp.put(str(source), str(tmp_path / "b"))
        assert sftp.stat(str(tmp_path / "b")).st_size == 100_000
        sftp.get(str(tmp_path / "b"), str(tmp_path / "c"))
    assert (tmp_path / "c").read_bytes() == source.read_bytes()


def test_host_key_is_checked(sshd_server: SSHServer, tmp_path: Path) -> None:
    line = sshd_server.known_hosts.read_text()
    assert line.startswith(f"[127.0.0.1]:{sshd_server.port} ssh-ed25519 ")
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        connect(sshd_server, known_hosts=empty)


def test_host_keys_of_three_types(sshd_server: SSHServer) -> None:
    """The server offers a key of each type (as real servers do); known_hosts holds one."""
    assert set(sshd_server.host_keys) == {"ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"}
    for kind, algorithm in [("ssh-ed25519", "ssh-ed25519"),
                            ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"),
                            ("ssh-rsa", "rsa-sha2-512")]:
        transport = paramiko.Transport((sshd_server.host, sshd_server.port))
        try:
            transport.get_security_options().key_types = (algorithm,)
            transport.start_client(timeout=10)
            key = transport.get_remote_server_key()
            assert (key.get_name(), key.get_base64()) == (kind, sshd_server.host_keys[kind])
        finally:
            transport.close()
        assert sshd_server.known_hosts_line(kind).split() == [
            f"[127.0.0.1]:{sshd_server.port}", kind, sshd_server.host_keys[kind]]


def test_many_channels_on_one_connection(client: paramiko.SSHClient) -> None:
    transport = client.get_transport()
    assert transport is not None
    channels = [transport.open_session(timeout=10) for _ in range(25)]  # all open at once
    for i, channel in enumerate(channels):
        channel.exec_command(f"echo {i}")
    for i, channel in enumerate(channels):
        assert channel.makefile().read() == f"{i}\n".encode()
        assert channel.recv_exit_status() == 0
        channel.close()


def test_openssh_client_scp_alias_and_proxyjump(sshd_server: SSHServer, tmp_path: Path) -> None:
    def ssh(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=15,
                              stdin=subprocess.DEVNULL)

    done = ssh(*sshd_server.ssh_args(), "echo", "hi")
    assert (done.returncode, done.stdout) == (0, "hi\n"), done.stderr
    (tmp_path / "up").write_text("payload")
    remote = f"{sshd_server.user}@{sshd_server.host}:{tmp_path / 'remote'}"
    assert ssh(*sshd_server.scp_args(), str(tmp_path / "up"), remote).returncode == 0
    assert ssh(*sshd_server.scp_args(), remote, str(tmp_path / "down")).returncode == 0
    assert (tmp_path / "down").read_text() == "payload"
    # ssh finds ~/.ssh/config through the passwd entry, not $HOME: hence -F.
    config = str(sshd_server.home / ".ssh" / "config")
    assert sshd_server.ssh_config == Path(config)
    done = ssh("ssh", "-F", config, sshd_server.alias, "true")
    assert done.returncode == 0, done.stderr
    # A jump through the server to itself needs TCP forwarding; ssh passes -F on to the hop.
    done = ssh("ssh", "-F", config, "-J", sshd_server.alias, sshd_server.alias, "echo jumped")
    assert (done.returncode, done.stdout) == (0, "jumped\n"), done.stderr


def test_alias_via_paramiko_sshconfig(sshd_server: SSHServer) -> None:
    ssh_dir = sshd_server.home / ".ssh"
    assert {"config", "id_ed25519", "id_ed25519.pub", "known_hosts"} <= {
        p.name for p in ssh_dir.iterdir()}
    found = paramiko.SSHConfig.from_path(str(ssh_dir / "config")).lookup(sshd_server.alias)
    assert found["hostname"] == "127.0.0.1"
    assert found["port"] == str(sshd_server.port)
    assert found["user"] == sshd_server.user
    assert found["identityfile"] == [str(ssh_dir / "id_ed25519")]
    client = paramiko.SSHClient()
    client.load_host_keys(found["userknownhostsfile"])
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(found["hostname"], port=int(found["port"]), username=found["user"],
                   key_filename=found["identityfile"], look_for_keys=False, allow_agent=False)
    assert run(client, "true") == (0, "")
    client.close()


def test_accepted_logins_counts_connections(sshd_server: SSHServer) -> None:
    before = sshd_server.accepted_logins()
    clients = [connect(sshd_server) for _ in range(2)]
    assert wait_for(lambda: sshd_server.accepted_logins() == before + 2)
    for c in clients:
        assert run(c, "true")[0] == 0  # more channels are no more logins
        c.close()
    assert sshd_server.accepted_logins() == before + 2


def test_killing_a_session_pid_drops_the_connection(sshd_server: SSHServer) -> None:
    before = set(sshd_server.session_pids())
    client = connect(sshd_server)
    try:
        new = set(sshd_server.session_pids()) - before
        assert len(new) == 1
        transport = client.get_transport()
        assert transport is not None and transport.is_active()
        os.kill(new.pop(), signal.SIGTERM)
        assert wait_for(lambda: not transport.is_active(), 30)  # slow under a loaded machine
        with pytest.raises(paramiko.SSHException):
            client.exec_command("true")
    finally:
        client.close()


def test_stop_leaves_nothing_running(tmp_path: Path) -> None:
    server = start_sshd(tmp_path)
    client = connect(server)
    # An unauthenticated connection too: its [net] process outlives a killed monitor.
    raw = socket.create_connection((server.host, server.port), timeout=5)
    assert raw.recv(4) == b"SSH-"
    raw.sendall(b"SSH-2.0-half-open\r\n")  # sshd forks [net] after the version exchange
    assert wait_for(lambda: len(server.session_pids()) == 2)
    # The root session is one process; the unauthenticated one a monitor and its [net] child.
    assert wait_for(lambda: len(sshd_module._sshd_descendants(server.pid)) >= 3)
    processes = [server.pid, *sshd_module._sshd_descendants(server.pid)]
    started = time.monotonic()
    server.stop()
    server.stop()  # idempotent
    assert time.monotonic() - started < 2
    assert not [pid for pid in processes if sshd_module._alive(pid)]
    transport = client.get_transport()
    assert transport is not None and wait_for(lambda: not transport.is_active())
    client.close()
    try:  # the half-open connection reaches end of file once what sshd sent is read
        while raw.recv(65536):
            pass
    except ConnectionResetError:
        pass
    raw.close()
    with pytest.raises(OSError):
        connect(server)


# --- keyboard-interactive server -------------------------------------------------------------


def kbd_transport(server: SSHServer) -> paramiko.Transport:
    transport = paramiko.Transport((server.host, server.port))
    host_keys = paramiko.HostKeys(str(server.known_hosts))
    expected = host_keys.lookup(f"[{server.host}]:{server.port}")
    assert expected is not None
    transport.connect()
    key = transport.get_remote_server_key()
    assert expected[key.get_name()] == key
    return transport


Handler = Callable[[str, str, list[tuple[str, bool]]], list[str]]


def answer(password: str, asked: list[str]) -> Handler:
    """A keyboard-interactive handler that gives ``password`` and records the prompts."""

    def handler(title: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
        # PAM asks for the password, then sshd may send a last round with no prompts.
        asked.extend(p for p, _ in prompts)
        return [password for _ in prompts]

    return handler


@needs_root
def test_keyboard_interactive_login(sshd_kbd_server: SSHServer) -> None:
    server = sshd_kbd_server
    assert server.user == sshd_module.TEST_USER and server.password
    transport = kbd_transport(server)
    try:
        asked: list[str] = []
        assert transport.auth_interactive(server.user, answer(server.password, asked)) == []
        assert asked == ["Password: "]
        channel = transport.open_session()
        channel.exec_command("whoami; cd && touch written && echo ok")
        assert channel.makefile().read() == f"{server.user}\nok\n".encode()
        assert channel.recv_exit_status() == 0
    finally:
        transport.close()
    assert server.accepted_logins() >= 1


@needs_root
def test_keyboard_interactive_refuses_wrong_password_and_keys(
        sshd_kbd_server: SSHServer) -> None:
    server = sshd_kbd_server
    transport = kbd_transport(server)
    asked: list[str] = []
    try:
        key = paramiko.Ed25519Key.from_private_key_file(str(server.key_path))
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_publickey(server.user, key)
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_interactive(server.user, answer("not the password", asked))
        assert asked == ["Password: "]
        assert not transport.is_authenticated()
    finally:
        transport.close()


def test_keyboard_interactive_needs_root(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(RuntimeError, match="needs root"):
        start_sshd(tmp_path, keyboard_interactive=True)
