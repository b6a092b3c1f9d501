"""Hosts over SSH, against a real OpenSSH server on a loopback port."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.hosts import count_status_requests, ssh_host
from helpers.kernel import Kernel, start_kernel
from helpers.waiting import sleep_then, wait_for

from remote_magic import RemoteExecutor
from remote_magic.client.core import Client
from remote_magic.client.store import TaskStore
from remote_magic.client.transport.connection import Target, connect
from remote_magic.client.transport.ssh import SSHTransport
from remote_magic.config.hosts import HostConfig
from remote_magic.errors import AuthenticationError, HostKeyError, TransportError
from remote_magic.testing.sshd import start_sshd
from remote_magic.wire.taskdir import TaskPaths, read_state


@pytest.fixture
def hpc(home: Path, sshd: Any) -> Path:
    """The test's hosts file gains `hpc`, the sshd on loopback, with a fresh work directory."""
    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(sshd, "hpc", home / "remote"))
    return home / "remote"


def test_calls_run_over_ssh_with_one_login(hpc: Path, sshd: Any) -> None:
    before = sshd.accepted_logins()
    with RemoteExecutor("hpc") as pool:
        futures = [pool.submit(pow, 2, n) for n in range(10)]
        assert [f.result(timeout=60) for f in futures] == [2 ** n for n in range(10)]
        big = np.arange(5_000_000, dtype=np.float64)  # 40 MB: streamed, not inline
        assert pool.submit(np.sum, big).result(timeout=60) == big.sum()
        doubled = pool.submit(lambda a: a * 2, big).result(timeout=60)
        assert doubled[-1] == big[-1] * 2
    assert sshd.accepted_logins() - before == 1
    tasks = list((hpc / "tasks").iterdir())
    assert len(tasks) == 12 and all(oct(t.stat().st_mode & 0o777) == "0o700" for t in tasks)


def test_remote_exception_keeps_type_and_traceback(hpc: Path) -> None:
    def fails(x: int) -> float:
        return x / 0

    with RemoteExecutor("hpc") as pool, pytest.raises(ZeroDivisionError) as info:
        pool.submit(fails, 1).result(timeout=60)
    assert "return x / 0" in info.value.remote_traceback


def test_ssh_config_alias_is_honoured(home: Path, sshd: Any,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Every setting comes from the alias: ignoring HostName, Port, User, IdentityFile or
    UserKnownHostsFile would fail (no default key, known_hosts or user name would do)."""
    client_home = home / "client"
    (client_home / ".ssh").mkdir(parents=True)
    key = home / "keys" / "lab key"
    key.parent.mkdir()
    shutil.copyfile(sshd.key_path, key)
    key.chmod(0o600)
    trusted = home / "trust" / "lab_hosts"
    trusted.parent.mkdir()
    shutil.copyfile(sshd.known_hosts, trusted)
    (client_home / ".ssh" / "config").write_text(textwrap.dedent(f"""\
        Host lab
            HostName {sshd.host}
            Port {sshd.port}
            User {sshd.user}
            IdentityFile "{key}"
            UserKnownHostsFile {trusted}
        """))
    monkeypatch.setenv("HOME", str(client_home))
    for variable in ("LOGNAME", "USER"):  # what the user name would default to
        monkeypatch.setenv(variable, "not-the-login-user")
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with open(home / "hosts.yaml", "a") as f:
        f.write(f"  viaalias:\n    address: lab\n    python: {sys.executable}\n"
                f"    workdir: {home / 'alias-work'}\n")
    client = Client()
    try:
        with RemoteExecutor("viaalias", client=client) as pool:
            assert pool.submit(pow, 3, 3).result(timeout=60) == 27
        assert "transport: paramiko; applied from ~/.ssh/config: HostName, User, Port, " \
            "IdentityFile, UserKnownHostsFile" in client.notes("viaalias")
    finally:
        client.close()


def test_proxy_jump_through_one_and_two_bastions(home: Path, sshd: Any, bastion: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    client_home = home / "client"
    (client_home / ".ssh").mkdir(parents=True)
    (client_home / ".ssh" / "config").write_text(
        bastion.ssh_config.read_text() + sshd.ssh_config.read_text())
    monkeypatch.setenv("HOME", str(client_home))
    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(sshd, "behind", home / "jump-work", proxy_jump=bastion.alias))
        f.write(ssh_host(sshd, "farther", home / "jump-work",
                         proxy_jump=f"{bastion.alias}, {sshd.alias}"))
    for name, through_bastion, through_target in (("behind", 1, 1), ("farther", 1, 2)):
        before = bastion.accepted_logins(), sshd.accepted_logins()
        with RemoteExecutor(name) as pool:
            assert pool.submit(pow, 2, 2).result(timeout=60) == 4
        assert (bastion.accepted_logins() - before[0],
                sshd.accepted_logins() - before[1]) == (through_bastion, through_target), name


def test_a_large_file_crosses_a_jump_host_both_ways_intact(tmp_path: Path, sshd: Any,
                                                           bastion: Any,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The hop's channel is read through HopSocket, which serves paramiko's small reads from
    one big one: 64 MiB up and back (many windows' worth) must come back byte for byte."""
    client_home = tmp_path / "client"
    (client_home / ".ssh").mkdir(parents=True)
    (client_home / ".ssh" / "config").write_text(bastion.ssh_config.read_text())
    monkeypatch.setenv("HOME", str(client_home))
    source = tmp_path / "big"
    data = os.urandom(64 << 20)
    source.write_bytes(data)
    transport = _transport(sshd, tmp_path / "remote", proxy_jump=bastion.alias)
    try:
        assert transport.upload(source, "big") == len(data)
        transport.download("big", tmp_path / "back")
    finally:
        transport.close()
    assert (tmp_path / "back").read_bytes() == data


def test_each_hop_key_is_checked(home: Path, sshd: Any, bastion: Any,
                                 monkeypatch: pytest.MonkeyPatch, ssh_transport: str) -> None:
    """A hop with no ~/.ssh/config entry is checked against the host's known_hosts (paramiko;
    OpenSSH: the user's), which does not know the bastion: refused before anything reaches
    the bastion or the target (OpenSSH asks whether to trust it, and nobody answers here)."""
    monkeypatch.setenv("HOME", str(home))  # no ~/.ssh at all
    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(sshd, "badhop", home / "badhop-work",
                         proxy_jump=f"{bastion.user}@{bastion.host}:{bastion.port}"))
    before = bastion.accepted_logins(), sshd.accepted_logins()
    expected = (rf"\[127.0.0.1\]:{bastion.port} .* is not in {sshd.known_hosts}"
                if ssh_transport == "paramiko" else
                rf"(?s)does not know the host key .* nobody can answer here .*"
                rf"\[127.0.0.1\]:{bastion.port}.* SHA256:")
    with pytest.raises(HostKeyError, match=expected):
        RemoteExecutor("badhop").submit(pow, 1, 1)
    assert (bastion.accepted_logins(), sshd.accepted_logins()) == before
    assert not (home / "badhop-work").exists()


def test_unknown_host_key_is_refused_before_anything_is_sent(home: Path, sshd: Any,
                                                            ssh_transport: str) -> None:
    empty = home / "empty_known_hosts"
    empty.write_text("")
    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(sshd, "stranger", home / "stranger-work",
                         known_hosts=str(empty)))
    before = sshd.accepted_logins()
    with pytest.raises(HostKeyError) as info:
        RemoteExecutor("stranger").submit(pow, 1, 1)
    message = str(info.value)
    assert "SHA256:" in message and ("not in" in message and "ssh-keyscan" in message
                                     if ssh_transport == "paramiko" else
                                     "does not know the host key" in message)
    assert sshd.accepted_logins() == before
    assert not (home / "stranger-work").exists()


def test_changed_host_key_is_refused(home: Path, sshd: Any, ssh_transport: str) -> None:
    other = home / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True)
    kind, key = other.with_suffix(".pub").read_text().split()[:2]
    wrong = home / "wrong_known_hosts"
    wrong.write_text(f"[{sshd.host}]:{sshd.port} {kind} {key}\n")
    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(sshd, "changed", home / "changed-work", known_hosts=str(wrong)))
    with pytest.raises(HostKeyError, match="CHANGED.*ssh-keygen -R" if ssh_transport ==
                       "paramiko" else "(?s)HOST IDENTIFICATION HAS CHANGED.*ssh-keygen -f"):
        RemoteExecutor("changed").submit(pow, 1, 1)


def _target(server: Any, known_hosts: Path) -> Target:
    return Target(name="t", hostname=server.host, port=server.port, user=server.user,
                  identity_files=(str(server.key_path),), known_hosts=str(known_hosts))


@pytest.mark.parametrize("kind, algorithm", [("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"),
                                             ("ssh-rsa", "rsa-sha2-512")])
def test_host_known_only_by_a_key_type_paramiko_would_not_pick(
        tmp_path: Path, sshd: Any, kind: str, algorithm: str) -> None:
    """The server prefers ed25519, but known_hosts holds only its key of another type."""
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line(kind))
    conn = connect(_target(sshd, known))
    try:
        assert conn.transport.host_key_type == algorithm
        assert conn.run("echo hi")[1] == "hi\n"
    finally:
        conn.close()


def test_changed_key_of_another_type_is_reported_as_changed(tmp_path: Path, sshd: Any) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "256", "-N", "", "-f", str(other)],
                   check=True)
    kind, key = other.with_suffix(".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[{sshd.host}]:{sshd.port} {kind} {key}\n")
    before = sshd.accepted_logins()
    with pytest.raises(HostKeyError, match=f"CHANGED: it offers {kind} SHA256:"):
        connect(_target(sshd, known))
    # A key of a type the server no longer has at all: changed too, not unknown.
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f",
                    str(tmp_path / "p384")], check=True)
    kind, key = (tmp_path / "p384.pub").read_text().split()[:2]
    known.write_text(f"[{sshd.host}]:{sshd.port} {kind} {key}\n")
    with pytest.raises(HostKeyError, match="CHANGED: .* has only ecdsa-sha2-nistp384 keys "
                                           "for it, and it offers none"):
        connect(_target(sshd, known))
    assert sshd.accepted_logins() == before


def test_wrong_key_is_refused_clearly(home: Path, sshd: Any) -> None:
    stray = home / "stray_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stray)],
                   check=True)
    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(sshd, "wrongkey", home / "wk", identity_file=str(stray)))
    with pytest.raises(AuthenticationError) as info:
        RemoteExecutor("wrongkey").submit(pow, 1, 1)
    assert str(stray) in str(info.value) and "identity_file" in str(info.value)


def test_task_survives_a_killed_connection(hpc: Path, sshd: Any) -> None:
    with RemoteExecutor("hpc") as pool:
        pool.submit(pow, 1, 1).result(timeout=60)  # connected
        logins = sshd.accepted_logins()
        future = pool.submit(sleep_then, 3.0, "survived")
        assert wait_for(lambda: "running" in _states(hpc), 30)
        sessions = sshd.session_pids()
        assert sessions
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # listed, then gone by itself (its connection ended)
                pass
        time.sleep(0.3)
        assert "running" in _states(hpc)  # cut off from the kernel, not killed with it
        assert future.result(timeout=90) == "survived"
    assert sshd.accepted_logins() == logins + 1  # the results came over a second login


def _states(workdir: Path) -> list[str]:
    return [read_state(TaskPaths(task))["state"] for task in (workdir / "tasks").iterdir()]


def test_setup_then_test_on_a_fresh_work_directory(hpc: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "remote_magic.cli", *args],
                              capture_output=True, text=True, timeout=120)

    setup = cli("setup", "hpc")
    assert setup.returncode == 0, setup.stderr
    assert list((hpc / "runtime").glob("remote_magic-*.zip"))
    test = cli("test", "hpc")
    assert test.returncode == 0, test.stdout + test.stderr
    for step in ("TCP reachable", "host key known", "authenticated", "login shell works",
                 "remote Python", "runtime importable", "agent mode", "work directory writable"):
        assert f"[ok] hpc: {step}" in test.stdout
    assert "[ok] hpc: agent mode: resident agent (pid " in test.stdout


def test_a_host_without_python_is_explained(home: Path, sshd: Any) -> None:
    """`test` stops at the Python step; a task is refused at once (no pointless fallback to
    the one-command-per-request mode, which needs the same Python) with what to do."""
    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(sshd, "nopython", home / "np", python="/opt/none/python3"))
    from remote_magic.client.hostcheck import check_host

    checks = check_host(Client(), "nopython")
    assert checks[-1].step == "remote Python" and not checks[-1].ok
    assert "'python:'" in checks[-1].detail and "cannot run" in checks[-1].detail
    for attempt in ("fresh host", "runtime already shipped"):
        with pytest.raises(TransportError) as info:
            RemoteExecutor("nopython").submit(pow, 1, 1)
        message = str(info.value)
        assert "no usable Python on nopython: '/opt/none/python3'" in message, attempt
        assert "set 'python:'" in message and "once per request" not in message, attempt
        if attempt == "fresh host":  # shipping the runtime found out; now it is there
            assert list((home / "np" / "runtime").glob("*.zip"))


@pytest.fixture(scope="module")
def ssh_kernel(tmp_path_factory: pytest.TempPathFactory, sshd: Any,
               ssh_transport: str) -> Iterator[Kernel]:
    """One kernel for the module's cells over SSH; `kernel.root` holds its files."""
    root = tmp_path_factory.mktemp("ssh-kernel")
    kernel = start_kernel(root, ssh_host(sshd, "hpc", root / "remote") +
                          f"    paths: {{{root / 'project' / 'shared'}: {root / 'scratch'}}}\n")
    kernel.root = root  # type: ignore[attr-defined]
    yield kernel
    kernel.shutdown()


def test_cell_over_ssh_with_files_and_collect(ssh_kernel: Kernel) -> None:
    kernel, root = ssh_kernel, ssh_kernel.root  # type: ignore[attr-defined]
    project = root / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "numbers.txt").write_text("1 2 3\n")
    (project / "shared").mkdir()
    (project / "shared" / "config.txt").write_text("mapped\n")
    mapped = root / "scratch"
    kernel.run(f"import os\nos.chdir({str(project)!r})\nfactor = 10")
    out = kernel.run(textwrap.dedent(f"""\
        %%remote -q hpc --files data {project / 'shared' / 'config.txt'} --collect out/*.csv
        import os, socket
        numbers = [int(x) * factor for x in open("data/numbers.txt").read().split()]
        mapped = open({str(mapped / 'config.txt')!r}).read().strip()
        os.makedirs("out", exist_ok=True)
        open("out/result.csv", "w").write(",".join(map(str, numbers)))
        print("ran in", os.getcwd())
        sum(numbers)"""))
    assert "ran in" in out.stdout and str(root / "remote") in out.stdout
    assert out.result["text/plain"] == "60"
    assert kernel.value("(numbers, mapped)") == ([10, 20, 30], "mapped")
    assert (project / "out" / "result.csv").read_text() == "10,20,30"
    assert "collected into" in out.stdout


def test_streams_displays_and_reuse_over_ssh(ssh_kernel: Kernel) -> None:
    cell = textwrap.dedent("""\
        %%remote -q hpc{}
        import os, time
        from IPython.display import HTML, display
        import matplotlib.pyplot as plt
        print("first", flush=True)
        time.sleep(1.5)
        display(HTML("<b>bold</b>"))
        plt.plot([1, 2, 3])
        print("second")
        stamp = os.getpid()""")
    out = ssh_kernel.run(cell.format(""))
    streams = [m for m in out.of_type("stream") if m["content"]["name"] == "stdout"]
    first = next(m for m in streams if "first" in m["content"]["text"])
    second = next(m for m in streams if "second" in m["content"]["text"])
    assert second["received"] - first["received"] > 1.0  # printed while the task ran
    data = [m["content"]["data"] for m in out.of_type("display_data")]
    assert any(d.get("text/html") == "<b>bold</b>" for d in data)
    assert sum("image/png" in d for d in data) == 1
    pid = ssh_kernel.value("stamp")
    again = ssh_kernel.run(cell.format(""))
    assert "identical task" in again.stdout and "--rerun" in again.stdout
    assert ssh_kernel.value("stamp") == pid
    assert any(d.get("text/html") == "<b>bold</b>"
               for d in (m["content"]["data"] for m in again.of_type("display_data")))
    ssh_kernel.run(cell.format(" --rerun"))
    assert ssh_kernel.value("stamp") != pid


def test_a_short_cell_with_more_output_than_one_reply_carries(ssh_kernel: Kernel) -> None:
    """A task that ends before any poll brings its output with its end, one reply's worth
    (256 KiB a stream): the rest is read after it, all of it, in order."""
    out = ssh_kernel.run("%%remote -q hpc --rerun\nfor i in range(40000):\n"
                         "    print(f'line {i:06d}', 'x' * 30)")
    assert out.ok
    lines = [line for line in out.stdout.splitlines() if not line.startswith("task ")]
    assert lines == [f"line {i:06d} {'x' * 30}" for i in range(40000)]


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_keyboard_interactive_is_answered_through_the_input_prompt(tmp_path: Path,
                                                                   transport: str) -> None:
    """The server's password prompt (PAM keyboard-interactive) reaches the notebook's input
    box, from paramiko's handler or from OpenSSH through askpass; asked once."""
    server = start_sshd(tmp_path / "kbd", keyboard_interactive=True)
    try:
        host = (f"  twofactor:\n    address: {server.user}@{server.host}\n"
                f"    port: {server.port}\n    known_hosts: {server.known_hosts}\n"
                f"    transport: {transport}\n"
                f"    python: /usr/bin/python3\n    workdir: /tmp/rm-kbd-{os.getpid()}\n")
        kernel = start_kernel(tmp_path, host)
        try:
            msg_id = kernel.client.execute("%%remote -q twofactor\nimport getpass\n"
                                           "who = getpass.getuser()", allow_stdin=True)
            request = kernel.client.get_stdin_msg(timeout=60)
            assert request["content"]["password"] is True
            assert "assword" in request["content"]["prompt"]
            kernel.client.input(server.password)
            out = kernel.collect(msg_id, timeout=120)
            assert out.ok, out.error
            assert kernel.value("who") == server.user
            again = kernel.client.execute("%%remote -q twofactor\nsecond = 2", allow_stdin=True)
            assert kernel.collect(again, timeout=60).ok  # no second prompt: the connection lives
            assert kernel.value("second") == 2
        finally:
            kernel.shutdown()
    finally:
        server.stop()


def test_transfer_past_one_gib_both_ways(tmp_path: Path, sshd: Any) -> None:
    """paramiko re-keys every 512 MiB by default and big transfers have stalled there."""
    source = tmp_path / "big"
    digest = hashlib.sha256()
    with open(source, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(1100):  # 1100 MiB
            chunk = block[:-8] + i.to_bytes(8, "big")
            digest.update(chunk)
            f.write(chunk)
    transport = _transport(sshd, tmp_path / "remote")
    try:
        assert transport.upload(source, "big") == source.stat().st_size
        source.unlink()
        transport.download("big", tmp_path / "back")
    finally:
        transport.close()
    check = hashlib.sha256()
    with open(tmp_path / "back", "rb") as f:
        while block := f.read(1 << 24):
            check.update(block)
    assert check.hexdigest() == digest.hexdigest()


def test_falls_back_when_the_resident_agent_cannot_run(home: Path, sshd: Any,
                                                      ssh_transport: str) -> None:
    """A host that will not keep our agent running: each request becomes one command."""
    wrapper = home / "python-no-resident"
    wrapper.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case " $* " in
          *" remote_magic.host.agent "*" --once "*) ;;
          *" remote_magic.host.agent "*) echo "long-running processes are not allowed" >&2; exit 3;;
        esac
        exec {sys.executable} "$@"
        """))
    wrapper.chmod(0o755)
    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(sshd, "strict", home / "strict-work", python=str(wrapper)))
    with RemoteExecutor("strict") as pool:
        assert pool.submit(pow, 2, 8).result(timeout=60) == 256
        big = np.arange(3_000_000, dtype=np.float64)  # 24 MB: whole-file copies both ways
        assert pool.submit(lambda a: a + 1, big).result(timeout=120)[-1] == big[-1] + 1
    from remote_magic.client.hostcheck import check_host

    checks = {c.step: c for c in check_host(Client(), "strict")}
    mode = checks["agent mode"]
    assert mode.ok is None and mode.detail.startswith("fallback: one remote command per request")
    assert ("SFTP" if ssh_transport == "paramiko" else "copies in sessions") in mode.detail
    assert "not allowed" in mode.detail
    assert all(c.ok for step, c in checks.items() if step != "agent mode")


def test_magics_manage_tasks_over_ssh(ssh_kernel: Kernel) -> None:
    kernel, root = ssh_kernel, ssh_kernel.root  # type: ignore[attr-defined]
    kernel.run("%%remote -q hpc --nowait --name napper\nimport time\nprint('dozing')\n"
               "time.sleep(60)\nnever = 1")
    kernel.run("%%remote -q hpc --nowait --name quick\nprint('quick one')\nquick = 5")
    # Read from the store file, not through a cell: the quick task's results load at the
    # start of the next cell, which must be the one checked below.
    store = TaskStore(root / "data" / "tasks.sqlite")
    ids = {r.name: r.id for r in store.list()}
    napper, quick = ids["napper"], ids["quick"]
    # The store says when the quick task has ended (however loaded the machine).
    assert wait_for(lambda: store.get(quick).final, 60)
    notice = kernel.run("pass")
    assert f"task {quick} completed on hpc" in notice.stdout
    assert kernel.value("quick") == 5
    table = kernel.run("%remote_status").of_type("display_data")[0]["content"]["data"]
    assert napper in table["text/plain"] and "running" in table["text/plain"]
    assert "dozing" in kernel.run(f"%remote_log {napper}").stdout
    assert "cancelling" in kernel.run(f"%remote_kill {napper}").stdout
    fetched = kernel.run(f"%remote_fetch {napper}", allow_error=True, timeout=60)
    assert "cancelled" in fetched.error["evalue"]
    assert "removed" in kernel.run(f"%remote_purge {napper} {quick}").stdout
    assert not (root / "remote" / "tasks" / napper).exists()


def _transport(sshd: Any, workdir: Path, **settings: Any) -> SSHTransport:
    host = HostConfig(name="t", address=f"{sshd.user}@{sshd.host}", port=sshd.port,
                      identity_file=str(sshd.key_path), known_hosts=str(sshd.known_hosts),
                      python=sys.executable, workdir=str(workdir), **settings)
    return SSHTransport(host, lambda event: None)


def test_short_or_damaged_uploads_are_refused_and_leave_nothing(tmp_path: Path,
                                                                 sshd: Any) -> None:
    remote = tmp_path / "remote"
    transport = _transport(sshd, remote)
    data = b"x" * 1000
    digest = hashlib.sha256(data).hexdigest()
    try:
        agent = transport.data_agent()
        for sent, claimed, match in ((data[:-1], digest, "received 999 of 1000 bytes"),
                                     (data[:-1] + b"y", digest, "hash differs"),
                                     (data + b"x", digest, "received 1001 of 1000 bytes")):
            handle = agent.request("put_open", path="upload", size=len(data), verify=True)
            agent.send_oneway("put_chunk", {"handle": handle}, sent)
            with pytest.raises(TransportError, match=match):
                agent.request("put_close", handle=handle, sha256=claimed)
        task = "ab" * 8
        with pytest.raises(TransportError, match="inputs.rmns arrived damaged"):
            transport.agent().call("stage", {"task": task, "files": [
                {"name": "spec.json", "size": 2, "sha256": hashlib.sha256(b"{}").hexdigest()},
                {"name": "inputs.rmns", "size": 1000, "sha256": digest}]}, b"{}" + data[:-1])
        assert not (remote / "tasks" / task).exists()
        # An upload cut off by a dropped connection: its temporary file goes with the agent.
        handle = agent.request("put_open", path="cut", size=len(data), verify=True)
        agent.send_oneway("put_chunk", {"handle": handle}, data[:500])
        assert wait_for(lambda: any(remote.glob(".cut.*.part")), 10)
    finally:
        transport.close()
    assert wait_for(lambda: not any(remote.glob(".cut.*.part")), 10)
    assert sorted(p.name for p in remote.iterdir()) == ["agent.log", "runtime", "tasks"]
    assert not any((remote / "tasks").iterdir())


def test_workdir_with_spaces_and_shell_metacharacters(home: Path, sshd: Any) -> None:
    workdir = home / "work dir $x;'q"
    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(sshd, "odd", workdir))
    with RemoteExecutor("odd") as pool:
        big = np.arange(2_000_000, dtype=np.float64)  # 16 MB: through the transfer channel
        assert pool.submit(np.sum, big).result(timeout=60) == big.sum()
    assert len(list((workdir / "tasks").iterdir())) == 1
    assert list((workdir / "runtime").glob("remote_magic-*.zip"))
    from remote_magic.client.hostcheck import check_host

    checks = check_host(Client(), "odd")
    assert all(c.ok for c in checks), checks
    assert not list(home.glob("work dir*[!q]"))  # nothing created at a mangled path


def test_one_status_request_per_poll_however_many_tasks(hpc: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    asked = count_status_requests(monkeypatch)
    client = Client()
    with RemoteExecutor("hpc", client=client) as pool:
        futures = [pool.submit(sleep_then, 1.5, str(i)) for i in range(8)]
        assert [f.result(timeout=60) for f in futures] == [str(i) for i in range(8)]
    session = client.session(client.host("hpc"))
    assert len(asked) == session.polls
    assert max(asked) == 8  # all eight in one request
    client.close()


def test_small_results_come_with_the_end_and_large_ones_are_asked_for(
        hpc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent pushes a task's end with its final status and, when they are small, its
    result files: the kernel neither polls again nor asks for them."""
    from remote_magic.client.agent_client import AgentClient

    asked: list[str] = []
    call = AgentClient.call

    def recording(self: AgentClient, op: str, *rest: Any, **options: Any) -> Any:
        asked.append(op)
        return call(self, op, *rest, **options)

    monkeypatch.setattr(AgentClient, "call", recording)
    with RemoteExecutor("hpc", rerun=True) as pool:
        assert pool.submit(sleep_then, 1.0, "small").result(timeout=60) == "small"
        assert "read" not in asked and "status" in asked
        ended = len(asked)
        big = pool.submit(sleep_then, 1.0, "x" * 3_000_000).result(timeout=60)
        assert len(big) == 3_000_000 and "read" in asked[ended:]


def test_a_task_on_the_fast_path_is_recorded_as_one_off_it(hpc: Path) -> None:
    """Inputs inside the staging request and results pushed with the end (a small call),
    or inputs streamed and results asked for (a 9 MB one): how a task travels differs,
    not what is kept. The store's records and the host's task directories say the same."""
    client = Client()
    try:
        with RemoteExecutor("hpc", rerun=True, client=client) as pool:
            small = pool.submit(str.upper, "x")
            large = pool.submit(str.upper, "x" * 9_000_000)  # > STREAM_MIN and PUSH_MAX
            assert small.result(timeout=60) == "X"
            assert large.result(timeout=60) == "X" * 9_000_000
            records = [client.store.get(f.task_id) for f in (small, large)]  # type: ignore
    finally:
        client.close()

    def kept(record: Any) -> dict[str, Any]:
        return {k: v is not None for k, v in vars(record).items()}

    assert [r.state for r in records] == ["completed", "completed"]
    assert kept(records[0]) == kept(records[1])
    folders = [hpc / "tasks" / r.id for r in records]
    names = [sorted(str(p.relative_to(f)) for p in f.rglob("*")) for f in folders]
    assert names[0] == names[1]
    assert [read_state(TaskPaths(f))["state"] for f in folders] == ["completed", "completed"]


def test_a_short_task_costs_one_round_trip(hpc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Staged and started in one request, followed by the agent from its start: a short
    task's end comes with its status and results, and the kernel asks nothing else."""
    from remote_magic.client.agent_client import AgentClient

    asked: list[str] = []
    call = AgentClient.call

    def recording(self: AgentClient, op: str, *rest: Any, **options: Any) -> Any:
        asked.append(op)
        return call(self, op, *rest, **options)

    with RemoteExecutor("hpc", rerun=True) as pool:
        assert pool.submit(pow, 2, 3).result(timeout=60) == 8  # connected, runtime shipped
        monkeypatch.setattr(AgentClient, "call", recording)
        assert [pool.submit(pow, 2, n).result(timeout=60) for n in range(3)] == [1, 2, 4]
    assert asked == ["stage"] * 3


def test_proxy_command_from_ssh_config(home: Path, sshd: Any, bastion: Any,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """~/.ssh/config's ProxyCommand (here OpenSSH's own `ssh -W` through the bastion
    fixture) carries the connection; options the paramiko transport does not apply are
    named in its notes; a ProxyCommand that fails says what it printed."""
    client_home = home / "client"
    (client_home / ".ssh").mkdir(parents=True)
    config = client_home / ".ssh" / "config"
    config.write_text(bastion.ssh_config.read_text() + textwrap.dedent(f"""\
        Host viaproxy
            HostName {sshd.host}
            Port {sshd.port}
            User {sshd.user}
            IdentityFile {sshd.key_path}
            UserKnownHostsFile {sshd.known_hosts}
            ProxyCommand ssh -F {config} -o BatchMode=yes -W %h:%p {bastion.alias}
            ControlMaster auto
            ControlPath ~/.ssh/cm-%C
        Host brokenproxy
            HostName {sshd.host}
            Port {sshd.port}
            ProxyCommand sh -c 'echo no route to the cluster >&2; exit 3'
        """))
    monkeypatch.setenv("HOME", str(client_home))
    with open(home / "hosts.yaml", "a") as f:
        for name in ("viaproxy", "brokenproxy"):
            f.write(f"  {name}:\n    address: {name}\n    python: {sys.executable}\n"
                    f"    workdir: {home / 'proxy-work'}\n")
    before = bastion.accepted_logins(), sshd.accepted_logins()
    client = Client()
    try:
        with RemoteExecutor("viaproxy", client=client) as pool:
            assert pool.submit(pow, 5, 2).result(timeout=60) == 25
        assert (bastion.accepted_logins() - before[0], sshd.accepted_logins() - before[1]) \
            == (1, 1)
        notes = client.notes("viaproxy")
        assert any("through its ProxyCommand (ssh -F" in n for n in notes), notes
        assert any("options that the paramiko transport leaves aside: ControlMaster, "
                   "ControlPath" in n for n in notes), notes
        with pytest.raises(TransportError, match="exited with status 3: no route to the "
                                                 "cluster"):
            client.reach("brokenproxy")
    finally:
        client.close()
