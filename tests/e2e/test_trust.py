"""Trust boundaries: another user on the machine, and a host that answers with hostile names.

The other user is a real account (`rmother`, created by the test as root, as the sshd fixture
creates `rmtest`); what it plants is planted as that user. The hostile host is this package's
own agent with two operations replaced, started through the host's `python` setting, so the
kernel side meets it over the real pipe or SSH channel.
"""

from __future__ import annotations

import io
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.kernel import start_kernel

from remote_magic.client.transport.local import LocalTransport
from remote_magic.client.transport.runtime import runtime_zip
from remote_magic.client.transport.ssh import SSHTransport
from remote_magic.config.hosts import HostConfig
from remote_magic.errors import RemoteMagicError, TransportError
from remote_magic.wire.serialization import dump_namespace
from remote_magic.wire.taskdir import trust_problem, workdir_message, write_json

OTHER = "rmother"
TASK = "0123456789abcdef"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a second user")


@pytest.fixture(scope="module")
def other() -> pwd.struct_passwd:
    """A second local account, for files another user put where ours should be."""
    try:
        return pwd.getpwnam(OTHER)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", "-c", "remote_magic test, another user",
                        OTHER], check=True, capture_output=True)
        return pwd.getpwnam(OTHER)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory both users can write, sticky as /tmp is (pytest's own are private to
    root): either may make folders in it, neither may rename or remove the other's."""
    path = Path(tempfile.mkdtemp(prefix="rm-trust-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_other(script: str) -> None:
    """Run a shell script as the other user."""
    subprocess.run(["sh", "-c", script], user=OTHER, group=OTHER, check=True,
                   capture_output=True, cwd="/")


class Plant:
    """A pickle that, once loaded, touches `marker`: what an attacker would put in a result."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return os.system, (f"touch {self.marker}",)


def clean_paragraph(text: str) -> None:
    """A refusal: one paragraph, none of our frames."""
    assert "Traceback" not in text and 'File "' not in text and "\n" not in text.strip(), text


def test_a_workdir_is_created_private_and_every_unsafe_one_is_refused_with_the_fix(
        shared: Path, other: pwd.struct_passwd) -> None:
    fresh = shared / "a" / "b" / "work"
    assert trust_problem(str(fresh), [("tasks", "dir")], create=True) is None
    for path in (shared / "a", shared / "a" / "b", fresh, fresh / "tasks"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path

    def refusal(workdir: Path, inside: list[tuple[str, str]] = []) -> str:  # noqa: B006
        problem = trust_problem(str(workdir), inside)
        assert problem is not None, workdir
        text = workdir_message(problem, "hpc")
        clean_paragraph(text)
        return text

    fresh.chmod(0o777)
    text = refusal(fresh)
    assert "can be changed by other users (mode 0777)" in text and f"chmod 700 {fresh}" in text
    fresh.chmod(0o700)
    theirs = shared / "theirs"
    as_other(f"mkdir -m 755 {theirs}")
    text = refusal(theirs)
    assert f"belongs to user '{OTHER}', not to you ('root')" in text
    assert "Set 'workdir:' of hpc in the hosts file to a directory of your own" in text
    text = refusal(theirs / "mine")  # swappable: they own the folder it is in
    assert f"lies inside {theirs}, which belongs to user '{OTHER}'" in text
    open_dir = shared / "open"
    open_dir.mkdir(mode=0o777)
    open_dir.chmod(0o777)
    assert "every user may change (mode 0777" in refusal(open_dir / "work")
    open_dir.chmod(0o1777)  # the sticky bit, as /tmp has: nobody can rename our entries
    assert trust_problem(str(open_dir / "work"), create=True) is None
    (fresh / "tasks").rmdir()
    (fresh / "tasks").symlink_to(theirs)
    assert "is a symbolic link" in refusal(fresh, [("tasks", "dir")])


def test_a_task_store_directory_another_user_owns_is_refused(
        shared: Path, other: pwd.struct_passwd, monkeypatch: pytest.MonkeyPatch) -> None:
    from remote_magic.client.paths import data_dir

    as_other(f"mkdir -m 777 {shared / 'store'}")
    monkeypatch.setenv("REMOTE_MAGIC_HOME", str(shared / "store"))
    with pytest.raises(RemoteMagicError) as info:
        data_dir()
    assert f"belongs to user '{OTHER}'" in str(info.value)
    assert "Set $REMOTE_MAGIC_HOME to a directory of your own" in str(info.value)
    monkeypatch.setenv("REMOTE_MAGIC_HOME", str(shared / "mine"))
    assert stat.S_IMODE(data_dir().stat().st_mode) == 0o700


def test_results_planted_by_another_user_are_never_loaded(
        tmp_path: Path, shared: Path, other: pwd.struct_passwd) -> None:
    """Through a real kernel on this machine: a task ran and completed; someone else then put
    their own results under its directory. The identical cell (which reuses stored results)
    refuses them instead of unpickling them; so do cells on a work directory of theirs."""
    work = shared / "work"
    kernel = start_kernel(tmp_path, f"  mine:\n    workdir: {work}\n")
    marker = shared / "pwned"
    try:
        kernel.run("%%remote -q mine\nx = 41 + 1")
        assert kernel.value("x") == 42
        (task,) = [p for p in (work / "tasks").iterdir() if not p.name.startswith(".")]
        # The attacker's results, made where the attacker may write, then put in the task's
        # place (the folder was open to them for a while, and is private again since).
        bait = shared / "bait"
        bait.mkdir(mode=0o755)
        write_json(bait / "state.json", {"state": "completed", "history": {}})
        write_json(bait / "result.json", {})
        dump_namespace({"x": Plant(marker)}, bait / "outputs.rmns")
        for path in bait.iterdir():
            path.chmod(0o644)
        for folder in (work, work / "tasks"):
            folder.chmod(0o777)
        as_other(f"mv {task} {task}.old && mkdir -m 700 {task} && cp {bait}/* {task}/")
        for folder in (work, work / "tasks"):
            folder.chmod(0o700)
        out = kernel.run("%%remote -q mine\nx = 41 + 1", allow_error=True)
        error = "\n".join(out.error["traceback"])
        assert not marker.exists()
        assert error.startswith("TransportError: ") and f"{task}, in the work directory" in error
        assert f"belongs to user '{OTHER}'" in error and "Move it aside" in error
        clean_paragraph(error)
        # A work directory created by the other user is refused before anything is read
        # or written there.
        theirs = shared / "theirs"
        as_other(f"mkdir -m 777 {theirs}")
        (tmp_path / "hosts.yaml").write_text(
            (tmp_path / "hosts.yaml").read_text() + f"  theirs:\n    workdir: {theirs}\n")
        out = kernel.run("%%remote -q theirs\ny = 1", allow_error=True)
        error = "\n".join(out.error["traceback"])
        assert f"The work directory of theirs, {theirs}, belongs to user '{OTHER}'" in error
        clean_paragraph(error)
        assert list(theirs.iterdir()) == []
    finally:
        kernel.shutdown()


def _planted_runtime(marker: Path) -> bytes:
    """A runtime zip whose agent, if it ever ran, would leave `marker`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("remote_magic/__init__.py", "")
        archive.writestr("remote_magic/agent.py", f"open({str(marker)!r}, 'w').close()\n")
    return buffer.getvalue()


def _ssh(sshd: Any, workdir: Path, python: str = sys.executable) -> SSHTransport:
    host = HostConfig(name="hpc", address=f"{sshd.user}@{sshd.host}", port=sshd.port,
                      identity_file=str(sshd.key_path), known_hosts=str(sshd.known_hosts),
                      python=python, workdir=str(workdir))
    return SSHTransport(host, lambda event: None)


def test_a_runtime_planted_under_its_predictable_name_is_never_run(
        shared: Path, other: pwd.struct_passwd, sshd: Any) -> None:
    name, _ = runtime_zip()
    marker = shared / "pwned"
    planted = shared / "planted.zip"
    planted.write_bytes(_planted_runtime(marker))
    planted.chmod(0o644)
    # 1. A shared work directory the other user made, with their runtime in it.
    theirs = shared / "theirs"
    as_other(f"mkdir -m 777 {theirs} {theirs}/runtime && cp {planted} {theirs}/runtime/{name}")
    transport = _ssh(sshd, theirs)
    try:
        with pytest.raises(TransportError) as info:
            transport.agent()
    finally:
        transport.close()
    text = str(info.value)
    assert f"The work directory of hpc, {theirs}, belongs to user '{OTHER}'" in text
    clean_paragraph(text)
    # 2. Our own work directory, but their file under the runtime's name.
    mine = shared / "mine"
    mine.mkdir(mode=0o700)
    (mine / "runtime").mkdir(mode=0o700)
    mine.chmod(0o711)  # for the copy only: they pass through
    (mine / "runtime").chmod(0o777)
    as_other(f"cp {planted} {mine}/runtime/{name}")
    (mine / "runtime").chmod(0o700)
    mine.chmod(0o700)
    transport = _ssh(sshd, mine)
    try:
        with pytest.raises(TransportError) as info:
            transport.agent()
        text = str(info.value)
        assert f"{mine}/runtime/{name}, in the work directory of hpc ({mine}), belongs to " \
               f"user '{OTHER}'" in text
        clean_paragraph(text)
        # 3. Ours, with other content (damaged, or put there by root): shipped again, then run.
        (mine / "runtime" / name).unlink()
        shutil.copyfile(planted, mine / "runtime" / name)
        assert transport.agent().request("hello")["workdir"] == str(mine)
    finally:
        transport.close()
    assert (mine / "runtime" / name).read_bytes() == runtime_zip()[1]
    assert not marker.exists()
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700


EVIL_AGENT = """\
import sys

from remote_magic.host import agent, fileops

NAMES = {names!r}


def glob(self, task, patterns):
    return {{"files": [{{"name": n, "size": 3}} for n in NAMES + ["ok.txt"]], "stopped": None}}


def read(self, exchange, task, names, inline_max):
    exchange.payload_out = b"evil"
    return [{{"name": "../../escaped", "size": 4, "inline": True}}]


fileops.FileOps.op_glob = glob
fileops.FileOps.op_read = read
sys.exit(agent.main(sys.argv[1:]))
"""


@pytest.fixture
def evil_python(tmp_path: Path) -> Iterator[tuple[str, list[str], Path]]:
    """A `python` for a host that runs a modified agent (and plain Python for the rest)."""
    outside = tmp_path / "outside"
    names = [str(outside / "absolute.txt"), "../escaped.txt", "sub/../../escaped2.txt",
             "link/through.txt", "sub/ok/../../../escaped3.txt", ""]
    (tmp_path / "evil_agent.py").write_text(EVIL_AGENT.format(names=names))
    wrapper = tmp_path / "python"
    wrapper.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = -m ] && [ "$2" = remote_magic.host.agent ]; then
            shift 2
            exec {sys.executable} {tmp_path / 'evil_agent.py'} "$@"
        fi
        exec {sys.executable} "$@"
        """))
    wrapper.chmod(0o755)
    yield str(wrapper), names, outside


@pytest.mark.parametrize("where", ["localhost", "ssh"])
def test_names_from_a_modified_agent_never_land_outside_the_target(
        where: str, tmp_path: Path, home: Path, evil_python: tuple[str, list[str], Path],
        sshd: Any) -> None:
    python, names, outside = evil_python
    outside.mkdir()
    dest = tmp_path / "notebook"
    dest.mkdir()
    (dest / "link").symlink_to(outside)
    work = tmp_path / "host"
    if where == "ssh":
        transport: Any = _ssh(sshd, work, python)
    else:
        transport = LocalTransport(HostConfig(name="hpc", workdir=str(work), python=python),
                                   lambda event: None)
    try:
        transport.agent().request("mkdir", task=TASK)
        (work / "tasks" / TASK / "work" / "ok.txt").write_text("fine")
        collected = transport.collect(TASK, ["*"], dest)
        assert list(collected) == ["ok.txt"] and (dest / "ok.txt").read_text() == "fine"
        assert collected.refused == names
        (note,) = collected.notes()
        assert note.startswith("--collect: refused file names from the host that point "
                               "outside this folder: ")
        if where == "ssh":
            with pytest.raises(TransportError) as info:
                transport.results(TASK, tmp_path / "copy" / "of" / "task")
            assert "file names that are not among them: '../../escaped'" in str(info.value)
            clean_paragraph(str(info.value))
    finally:
        transport.close()
    assert list(outside.iterdir()) == []
    made = {p.name for p in tmp_path.iterdir()} - {"data"}  # the local agent's log is there
    assert made == {"evil_agent.py", "python", "outside", "notebook", "host", "hosts.yaml"}
    assert sorted(p.name for p in dest.iterdir()) == ["link", "ok.txt"]
