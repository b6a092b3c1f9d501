"""`transport: openssh`: the system's ssh with all of the user's ssh_config, against the sshd
fixture. What both transports share runs in test_ssh.py and test_ssh_more.py, once per
transport; here is what only OpenSSH does: Match blocks, certificates, a master connection
the user opened, OpenSSH's own host-key verdicts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.waiting import sleep_then, wait_for

from remote_magic import RemoteExecutor
from remote_magic.client.core import Client
from remote_magic.client.hostcheck import check_host
from remote_magic.errors import AuthenticationError, ConfigError, HostKeyError, TransportError
from remote_magic.testing.sshd import start_sshd
from remote_magic.wire.taskdir import TaskPaths, read_state


def _user_config(home: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    """A ~/.ssh/config under a $HOME of the test's own (OpenSSH is then given it with -F,
    as it would otherwise read the account's home)."""
    ssh = home / "client" / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    config = ssh / "config"
    config.write_text(textwrap.dedent(text))
    config.chmod(0o600)
    monkeypatch.setenv("HOME", str(home / "client"))
    return config


def _add_host(home: Path, name: str, address: str, transport: str = "openssh",
              **extra: Any) -> None:
    settings = {"address": address, "transport": transport, "python": sys.executable,
                "workdir": home / "os-work", **extra}
    with open(home / "hosts.yaml", "a") as f:
        f.write(f"  {name}:\n" + "".join(f"    {k}: {v}\n" for k, v in settings.items()))


def _masters() -> set[int]:
    """Pids of our own master connections running (other tests' clients may hold some)."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "ControlMaster=yes" in line and "remote-magic-ssh-" in line:
            found.add(int(pid))
    return found


def test_match_block_and_proxy_command_one_login(home: Path, sshd: Any, bastion: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Every setting comes from a Match block (which paramiko would not evaluate with
    `exec`), through a ProxyCommand via the bastion; tasks, a 40 MB array and the transfer
    agent all ride one master connection: one login on each server."""
    config = home / "client" / ".ssh" / "config"
    _user_config(home, monkeypatch, bastion.ssh_config.read_text() + f"""
        Match originalhost lab exec "test -d /"
            HostName {sshd.host}
            Port {sshd.port}
            User {sshd.user}
            IdentityFile {sshd.key_path}
            IdentitiesOnly yes
            UserKnownHostsFile {sshd.known_hosts}
            StrictHostKeyChecking yes
            ProxyCommand ssh -F {config} -o BatchMode=yes -W %h:%p {bastion.alias}
        """)
    _add_host(home, "lab", "lab")
    before = bastion.accepted_logins(), sshd.accepted_logins()
    masters = _masters()
    client = Client()
    try:
        with RemoteExecutor("lab", client=client) as pool:
            assert [pool.submit(pow, 2, n).result(timeout=60) for n in range(5)] == \
                [1, 2, 4, 8, 16]
            big = np.arange(5_000_000, dtype=np.float64)
            assert pool.submit(lambda a: a * 2, big).result(timeout=60)[-1] == big[-1] * 2
        assert (bastion.accepted_logins() - before[0], sshd.accepted_logins() - before[1]) \
            == (1, 1)
        notes = client.notes("lab")
        assert any(n.startswith("transport: openssh (OpenSSH_") and str(config) in n
                   for n in notes), notes
        assert any("through its ProxyCommand (ssh -F" in n for n in notes), notes
        assert "OpenSSH's settings for it include: StrictHostKeyChecking true" in notes, notes
        steps = {c.step: c for c in check_host(client, "lab")}
        assert "TCP reachable" not in steps  # the ProxyCommand reaches it, not a direct TCP
        assert steps["authenticated"].ok and steps["agent mode"].ok
        assert "transport: openssh" in steps["notes"].detail
    finally:
        client.close()
    assert _masters() <= masters  # ours ends with the client


def test_user_certificate(home: Path, tmp_path_factory: pytest.TempPathFactory,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A key that is in no authorized_keys logs in by its certificate (CertificateFile at a
    path OpenSSH would not guess); the paramiko transport refuses the host, naming the
    option and the way out."""
    d = tmp_path_factory.mktemp("cert")
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
    subprocess.run([*keygen, "-f", str(d / "user_ca")], check=True)
    server = start_sshd(d / "server", user_ca=d / "user_ca.pub")
    try:
        subprocess.run([*keygen, "-f", str(d / "lab_key")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-s", str(d / "user_ca"), "-I", "test user",
                        "-n", server.user, "-V", "-5m:+1h", str(d / "lab_key.pub")], check=True)
        (d / "certs").mkdir()
        (d / "lab_key-cert.pub").rename(d / "certs" / "lab.cert")
        _user_config(home, monkeypatch, f"""\
            Host certlab
                HostName {server.host}
                Port {server.port}
                User {server.user}
                IdentityFile {d / 'lab_key'}
                CertificateFile {d / 'certs' / 'lab.cert'}
                IdentitiesOnly yes
                UserKnownHostsFile {server.known_hosts}
            """)
        _add_host(home, "certs", "certlab")
        _add_host(home, "certs-paramiko", "certlab", transport="paramiko")
        client = Client()
        try:
            with RemoteExecutor("certs", client=client) as pool:
                assert pool.submit(pow, 3, 4).result(timeout=60) == 81
            assert "ED25519-CERT" in server.log_path.read_text()
            with pytest.raises(TransportError, match=r"sets CertificateFile for certs-paramiko, "
                               r"which the built-in paramiko transport cannot honour.*"
                               r"'transport: openssh'"):
                client.reach("certs-paramiko")
        finally:
            client.close()
    finally:
        server.stop()


def test_reuses_the_users_master_connection(home: Path, sshd: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With the user's own master open (ControlMaster/ControlPath, the once-a-day 2FA
    login), nothing logs in again, and the master is still theirs afterwards."""
    sockets = Path(tempfile.mkdtemp(prefix="cm", dir="/tmp"))  # a socket path has ~100 bytes
    config = _user_config(home, monkeypatch, f"""\
        Host lab
            HostName {sshd.host}
            Port {sshd.port}
            User {sshd.user}
            IdentityFile {sshd.key_path}
            UserKnownHostsFile {sshd.known_hosts}
            ControlMaster auto
            ControlPath {sockets}/%C
            ControlPersist 10m
        """)
    ssh = ["ssh", "-F", str(config)]
    subprocess.run([*ssh, "-o", "BatchMode=yes", "-f", "-N", "lab"], check=True, timeout=30)
    try:
        logins = sshd.accepted_logins()
        _add_host(home, "lab", "lab")
        client = Client()
        try:
            with RemoteExecutor("lab", client=client) as pool:
                assert pool.submit(pow, 2, 5).result(timeout=60) == 32
            assert sshd.accepted_logins() == logins
            notes = client.notes("lab")
            assert any("on your open master connection" in n for n in notes), notes
            assert "OpenSSH's settings for it include: ControlMaster auto, ControlPersist " \
                "600" in notes, notes
        finally:
            client.close()
        assert subprocess.run([*ssh, "-O", "check", "lab"], capture_output=True).returncode == 0
    finally:
        subprocess.run([*ssh, "-O", "exit", "lab"], capture_output=True)
        shutil.rmtree(sockets, ignore_errors=True)


def test_host_keys_are_openssh_s_business(home: Path, sshd: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown key is refused as OpenSSH refuses it (StrictHostKeyChecking yes: without
    asking; the default: after asking, here answered no), a changed one always; nobody logs
    in meanwhile."""
    empty, wrong = home / "empty_hosts", home / "wrong_hosts"
    empty.write_text("")
    wrong.write_text(f"[{sshd.host}]:{sshd.port} ssh-ed25519 "
                     f"{sshd.host_keys['ssh-ed25519'][:-8]}AAAAAAAA\n")
    _user_config(home, monkeypatch, f"""\
        Host strict asking changed
            HostName {sshd.host}
            Port {sshd.port}
            User {sshd.user}
            IdentityFile {sshd.key_path}
        Host strict
            UserKnownHostsFile {empty}
            StrictHostKeyChecking yes
        Host asking
            UserKnownHostsFile {empty}
        Host changed
            UserKnownHostsFile {wrong}
        """)
    for name in ("strict", "asking", "changed"):
        _add_host(home, name, name)
    asked: list[str] = []

    def answer(text: str = "") -> str:
        asked.append(text)
        return "no"

    monkeypatch.setattr("builtins.input", answer)
    logins = sshd.accepted_logins()
    client = Client()
    try:
        with pytest.raises(HostKeyError, match="OpenSSH refused the host key"):
            client.reach("strict")
        assert asked == []
        with pytest.raises(HostKeyError, match="Host key verification failed"):
            client.reach("asking")
        assert len(asked) == 1 and "(yes/no" in asked[0] and "SHA256:" in asked[0]
        with pytest.raises(HostKeyError):
            client.reach("changed")
    finally:
        client.close()
    assert sshd.accepted_logins() == logins and empty.read_text() == ""


def test_refusals_say_what_to_do(home: Path, sshd: Any, monkeypatch: pytest.MonkeyPatch,
                                 tmp_path: Path) -> None:
    """A misspelt transport, an ssh_config OpenSSH cannot read, no ssh program, a login that
    fails: each says what to do, and nothing is left running."""
    with open(home / "hosts.yaml", "a") as f:
        f.write("  typo:\n    address: lab\n    transport: openshh\n")
    with pytest.raises(ConfigError, match="unknown transport 'openshh'; did you mean "
                                          "'openssh'"):
        Client().host("typo")
    (home / "hosts.yaml").write_text((home / "hosts.yaml").read_text().replace(
        "  typo:\n    address: lab\n    transport: openshh\n", ""))
    config = _user_config(home, monkeypatch, f"""\
        Host broken
            NoSuchOption yes
        Host nokey
            HostName {sshd.host}
            Port {sshd.port}
            User {sshd.user}
            IdentityFile {tmp_path / 'absent_key'}
            IdentitiesOnly yes
            BatchMode yes
            UserKnownHostsFile {sshd.known_hosts}
        """)
    _add_host(home, "broken", "broken")
    _add_host(home, "nokey", "nokey")
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    masters = _masters()
    client = Client()
    try:
        with pytest.raises(TransportError, match="OpenSSH cannot read its configuration for "
                                                 "broken.*line 2: Bad configuration option: "
                                                 "nosuchoption"):
            client.reach("broken")
        config.write_text(config.read_text().replace("    NoSuchOption yes\n", ""))
        with pytest.raises(AuthenticationError, match="(?s)OpenSSH could not log in to nokey.*"
                                                      "Permission denied"):
            client.reach("nokey")
        monkeypatch.setenv("PATH", str(tmp_path))
        with pytest.raises(TransportError, match="needs the OpenSSH client program `ssh`"):
            Client().reach("nokey")
    finally:
        client.close()
    assert _masters() <= masters


def test_a_lost_master_is_replaced(home: Path, sshd: Any,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The master dies (its connection dropped) while a task runs: the task runs on, and its
    result comes over a new master (one more login)."""
    _user_config(home, monkeypatch, sshd.ssh_config.read_text())
    _add_host(home, "lab", sshd.alias)
    masters = _masters()
    client = Client()
    try:
        with RemoteExecutor("lab", client=client) as pool:
            assert pool.submit(pow, 2, 2).result(timeout=60) == 4
            [master] = _masters() - masters
            logins = sshd.accepted_logins()
            future = pool.submit(sleep_then, 2.0, "survived")
            assert wait_for(lambda: "running" in _states(home / "os-work"), 30)
            os.kill(master, signal.SIGTERM)
            assert future.result(timeout=90) == "survived"
            assert sshd.accepted_logins() == logins + 1
            assert pool.submit(pow, 2, 3).result(timeout=60) == 8
    finally:
        client.close()
    assert _masters() <= masters


def _states(workdir: Path) -> list[str]:
    return [read_state(TaskPaths(task))["state"] for task in (workdir / "tasks").iterdir()]
