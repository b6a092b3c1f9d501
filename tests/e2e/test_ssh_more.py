"""More of the SSH host against real OpenSSH servers: ssh-agent logins, reconnect back-off,
`remote-magic test` advice for each failing step, ProxyJump from ~/.ssh/config, setup lines."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.hosts import ssh_host
from helpers.kernel import Kernel, start_kernel
from helpers.waiting import sleep_then, wait_for

from remote_magic import RemoteExecutor
from remote_magic.client.core import Client
from remote_magic.client.hostcheck import check_host
from remote_magic.client.transport.connection import connect, target_for
from remote_magic.client.transport.ssh import RECONNECT_FIRST, SSHTransport
from remote_magic.config.hosts import HostConfig
from remote_magic.errors import AuthenticationError, TransportError
from remote_magic.testing.sshd import start_sshd
from remote_magic.wire.taskdir import TaskPaths, read_state


def _environment(name: str) -> str | None:
    return os.environ.get(name)


def _accepted_since(server: Any, offset: int) -> list[str]:
    """sshd's `Accepted <method> for` log lines (one per login) after byte `offset`."""
    with open(server.log_path, "rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace").splitlines()
    return [line for line in lines if re.search(r"\bAccepted [\w/-]+ for ", line)]


def _add_host(home: Path, yaml: str) -> None:
    with open(home / "hosts.yaml", "a") as f:
        f.write(yaml)


# ------------------------------------------------------------------ ssh-agent


@pytest.fixture
def ssh_agent(tmp_path: Path) -> Iterator[Path]:
    """A real ssh-agent of this test's own, on a socket in tmp; killed afterwards."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        assert wait_for(sock.exists, 10), "ssh-agent did not create its socket"
        yield sock
    finally:
        agent.terminate()
        agent.wait(10)


def test_login_with_a_key_held_only_by_ssh_agent(home: Path, sshd: Any, ssh_agent: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """No identity_file, no ~/.ssh keys: the only key is in the agent, and it is enough."""
    added = subprocess.run(["ssh-add", str(sshd.key_path)], capture_output=True, text=True,
                           env=dict(os.environ, SSH_AUTH_SOCK=str(ssh_agent)), timeout=30)
    assert added.returncode == 0, added.stderr
    empty_home = home / "keyless"
    (empty_home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(empty_home))
    monkeypatch.setenv("SSH_AUTH_SOCK", str(ssh_agent))
    _add_host(home, f"  agented:\n    address: {sshd.user}@{sshd.host}\n    port: {sshd.port}\n"
                    f"    known_hosts: {sshd.known_hosts}\n    python: {sys.executable}\n"
                    f"    workdir: {home / 'agent-work'}\n")
    offset = sshd.log_path.stat().st_size
    with RemoteExecutor("agented") as pool:
        assert pool.submit(pow, 2, 5).result(timeout=60) == 32
    accepted = _accepted_since(sshd, offset)
    assert len(accepted) == 1 and f"Accepted publickey for {sshd.user}" in accepted[0]
    checks = {c.step: c for c in check_host(Client(), "agented")}
    assert checks["authenticated"].ok
    assert "ssh-agent key 1" in checks["authenticated"].detail
    # The control: the same host without the agent has nothing to log in with.
    monkeypatch.delenv("SSH_AUTH_SOCK")
    host = HostConfig(name="agented", address=f"{sshd.user}@{sshd.host}", port=sshd.port,
                      known_hosts=str(sshd.known_hosts))
    with pytest.raises(AuthenticationError, match="tried: nothing usable"):
        connect(target_for(host))


# ------------------------------------------------------------------ reconnect back-off


class CountingListener:
    """A TCP port that takes every connection and drops it at once, noting when it came:
    what an SSH client meets at a host whose sshd is gone but whose port still answers."""

    def __init__(self, port: int) -> None:
        self.times: list[float] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(50)
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.times.append(time.monotonic())
            conn.close()

    def close(self) -> list[float]:
        # shutdown() wakes the thread blocked in accept(); close() alone does not.
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(5)
        return list(self.times)


def test_reconnects_back_off_while_the_host_is_down(home: Path, tmp_path: Path) -> None:
    """The host goes away mid-task; the session's polls and a view asking twenty times a
    second add up to a few attempts, spaced further and further apart, not hundreds. Once the
    host is back the session's own next attempt reconnects and the task's result arrives."""
    server = start_sshd(tmp_path / "flaky")
    port = server.port
    _add_host(home, ssh_host(server, "flaky", home / "flaky-work"))
    client = Client()
    try:
        with RemoteExecutor("flaky", client=client) as pool:
            future = pool.submit(sleep_then, 2, "survived")
            tasks = home / "flaky-work" / "tasks"
            assert wait_for(lambda: tasks.exists() and any(
                read_state(TaskPaths(t))["state"] == "running" for t in tasks.iterdir()), 30)
            transport = client.session(client.host("flaky")).transport
            assert isinstance(transport, SSHTransport)
            server.stop()
            listener = CountingListener(port)
            refusals: list[str] = []
            stop = threading.Event()

            def view() -> None:  # what a live view or a callback does from its own thread
                while not stop.wait(0.05):
                    try:
                        transport.agent().request("list")
                    except TransportError as exc:
                        refusals.append(str(exc))

            viewer = threading.Thread(target=view, daemon=True)
            viewer.start()
            time.sleep(4.5)
            stop.set()
            viewer.join(10)
            times = listener.close()
            waiting = transport.retry_delay()
            logins = server.accepted_logins()
            server = start_sshd(tmp_path / "flaky", port=port)
            assert future.result(timeout=60) == "survived"
            assert server.accepted_logins() == logins + 1
            assert transport.retry_delay() == 0  # the success forgot the failures
            assert pool.submit(pow, 3, 2).result(timeout=60) == 9
    finally:
        client.close()
        server.stop()
    # Attempts at about 0, 0.5, 1.5 and 3.5 s after the drop; without the back-off there
    # would be one per request. A busy machine only delays attempts, so each gap is at least
    # its wait, and the k-th wait is RECONNECT_FIRST * 2**k or more (more when the first
    # attempts met the closed port before the listener was up).
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert 2 <= len(times) <= 5, (times, gaps)
    assert all(gap >= 0.9 * RECONNECT_FIRST * 2 ** k for k, gap in enumerate(gaps)), gaps
    assert len(refusals) > 20 and len(refusals) > 5 * len(times)
    assert any("the next one is in" in text and "unreachable" in text for text in refusals)
    assert waiting > 0  # it was still backing off when the host came back


def test_a_command_of_the_user_tries_at_once(tmp_path: Path) -> None:
    """Back-off holds the background threads, not the user: a request from the main thread
    (a cell, a magic, the command line) makes an attempt whatever the schedule says."""
    listener = CountingListener(0)
    port = listener.port
    known = tmp_path / "known_hosts"
    known.write_text("")
    host = HostConfig(name="down", address="nobody@127.0.0.1", port=port,
                      known_hosts=str(known), workdir=str(tmp_path / "w"))
    transport = SSHTransport(host, lambda event: None)
    try:
        for attempt in range(1, 4):
            with pytest.raises(TransportError) as info:
                transport.connection()
            assert "next one is in" not in str(info.value)
            assert wait_for(lambda n=attempt: len(listener.times) == n, 5), attempt
        assert transport.retry_delay() > RECONNECT_FIRST * 2  # three failures: 2 s
        refused: list[BaseException] = []

        def background() -> None:
            try:
                transport.connection()
            except TransportError as exc:
                refused.append(exc)

        worker = threading.Thread(target=background)
        worker.start()
        worker.join(10)
        assert "the last 3 attempts in a row to connect failed" in str(refused[0])
        time.sleep(0.3)
        assert len(listener.times) == 3  # no attempt from the background thread
    finally:
        listener.close()
        transport.close()


# ------------------------------------------------------------------ remote-magic test advice


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _failing_host(case: str, sshd: Any, root: Path) -> str:
    """YAML for a host named `case` that fails that step."""
    workdir = root / f"{case}-work"
    if case == "tcp":
        return ssh_host(sshd, case, workdir, port=_closed_port())
    if case == "hostkey":
        (root / "empty_known_hosts").write_text("")
        return ssh_host(sshd, case, workdir, known_hosts=root / "empty_known_hosts")
    if case == "auth":
        stranger = root / "stranger_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                       check=True)
        return ssh_host(sshd, case, workdir, identity_file=stranger)
    if case == "shell":
        return ssh_host(sshd, case, workdir, setup='"echo giving up >&2\\nexit 1"')
    if case == "python-version":
        other = root / "python3.5"
        other.write_text("#!/bin/sh\necho 3.5.10\n")
        other.chmod(0o755)
        return ssh_host(sshd, case, workdir, python=other)
    if case == "python-missing":
        return ssh_host(sshd, case, workdir, python="/opt/nowhere/bin/python3")
    if case == "workdir":  # not even root can make a directory under a regular file
        return ssh_host(sshd, case, "/etc/passwd/remote_magic")
    raise AssertionError(case)


# case -> (the failing step, what its advice must say)
ADVICE = {
    "tcp": ("TCP reachable", ["Connection refused", "'address:' and 'port:'", "VPN"]),
    "hostkey": ("host key known", ["is not in", "ssh-keyscan", "nothing was sent"]),
    "auth": ("authenticated", ["Could not log in", "'identity_file'", "authorized_keys",
                               "ssh-add"]),
    "shell": ("login shell works", ["exited 1", "giving up", "fix the 'setup:' lines",
                                    "~/.bash_profile"]),
    "python-version": ("remote Python", ["is 3.5.10", "does not cross",
                                         "set 'python:' for python-version",
                                         "module load python/"]),
    "python-missing": ("remote Python", ["'/opt/nowhere/bin/python3' does not run there",
                                         "set 'python:'", "module load python/"]),
    "workdir": ("work directory writable", ["Not a directory", "set 'workdir:' for workdir",
                                            "~/.remote_magic"]),
}


@pytest.mark.parametrize("case", list(ADVICE))
def test_a_failing_step_is_named_with_what_to_do(case: str, home: Path, sshd: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)  # no key from elsewhere
    monkeypatch.setenv("HOME", str(home))  # no default keys either
    _add_host(home, _failing_host(case, sshd, home))
    checks = check_host(Client(), case)
    step, phrases = ADVICE[case]
    last = checks[-1]
    assert (last.step, last.ok) == (step, False), checks
    assert all(c.ok is not False for c in checks[:-1]), checks
    for phrase in phrases:
        assert phrase in last.detail, (phrase, last.detail)
    assert f"[FAIL] {case}: {step}: " in str(last)


def test_a_setup_line_that_fails_is_a_warning(home: Path, sshd: Any) -> None:
    """A failing line does not stop bash, so the host works, but what it should have set up
    is missing: `test` says so instead of passing quietly."""
    _add_host(home, ssh_host(sshd, "noisy", home / "noisy-work",
                             setup="no-such-module-command python/3.99"))
    checks = {c.step: c for c in check_host(Client(), "noisy")}
    shell = checks["login shell works"]
    assert shell.ok is None and "no-such-module-command" in shell.detail
    assert "print errors" in shell.detail
    assert checks["agent mode"].ok and checks["work directory writable"].ok


def test_cli_test_exits_nonzero_and_prints_the_advice(home: Path, sshd: Any) -> None:
    _add_host(home, ssh_host(sshd, "elsewhere", "/etc/passwd/remote_magic"))
    done = subprocess.run([sys.executable, "-m", "remote_magic.cli", "test", "elsewhere"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "[ok] elsewhere: remote Python" in done.stdout
    assert "[FAIL] elsewhere: work directory writable: /etc/passwd/remote_magic" in done.stdout
    assert "runtime importable" not in done.stdout  # the steps after a failure are skipped


def test_remote_hosts_test_in_a_kernel(tmp_path: Path, sshd: Any) -> None:
    kernel: Kernel = start_kernel(tmp_path, ssh_host(sshd, "hpc", tmp_path / "remote") +
                                  ssh_host(sshd, "broken", tmp_path / "b",
                                           python="/opt/nowhere/python3"))
    try:
        out = kernel.run("%remote_hosts --test", timeout=120).stdout
    finally:
        kernel.shutdown()
    for step in ("TCP reachable", "authenticated", "login shell works", "remote Python",
                 "work directory writable", "runtime importable", "agent mode"):
        assert f"[ok] hpc: {step}" in out, out
    assert "[ok] localhost: agent starts, Python matches" in out
    assert "[FAIL] broken: remote Python: '/opt/nowhere/python3' does not run there" in out


# ------------------------------------------------------------------ ~/.ssh/config, setup


def test_proxy_jump_written_in_ssh_config(home: Path, sshd: Any, bastion: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The hosts file names only the alias; the hop comes from its ProxyJump line."""
    client_home = home / "client"
    (client_home / ".ssh").mkdir(parents=True)
    (client_home / ".ssh" / "config").write_text(bastion.ssh_config.read_text() + textwrap.dedent(
        f"""\
        Host inner
            HostName {sshd.host}
            Port {sshd.port}
            User {sshd.user}
            IdentityFile {sshd.key_path}
            UserKnownHostsFile {sshd.known_hosts}
            ProxyJump {bastion.alias}
        """))
    monkeypatch.setenv("HOME", str(client_home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    _add_host(home, f"  inner:\n    address: inner\n    python: {sys.executable}\n"
                    f"    workdir: {home / 'inner-work'}\n")
    before = bastion.accepted_logins(), sshd.accepted_logins()
    with RemoteExecutor("inner") as pool:
        assert pool.submit(pow, 2, 10).result(timeout=60) == 1024
    assert (bastion.accepted_logins() - before[0], sshd.accepted_logins() - before[1]) == (1, 1)
    checks = {c.step: c for c in check_host(Client(), "inner")}
    assert "TCP reachable" not in checks  # reached through the hop, not directly
    assert all(c.ok for c in checks.values()), checks


def test_setup_lines_reach_the_task(home: Path, sshd: Any) -> None:
    _add_host(home, ssh_host(sshd, "prepared", home / "prepared-work",
                             setup='"export RM_PROBE=first\\nexport RM_PROBE=$RM_PROBE-second"'))
    with RemoteExecutor("prepared") as pool:
        assert pool.submit(_environment, "RM_PROBE").result(timeout=60) == "first-second"
