"""One cell cannot wedge a host: a disk without room is one clear error that names the host and
the space needed, with nothing left behind, and `--collect` searches stay bounded (no link
loops followed, a cap on matches and on time)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.disks import small_disk as mounted_small_disk
from helpers.hosts import ssh_host

from remote_magic import RemoteExecutor
from remote_magic.client.transport import Collected
from remote_magic.host.agent import Agent
from remote_magic.host.fileops import _Finder
from remote_magic.wire.taskdir import TaskPaths

TASK = "0123456789abcdef"
SMALL_DISK = 1024 * 1024  # bytes: a tmpfs this size holds the work directory


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system with 1 MiB of room (a tmpfs, mounted as root)."""
    with mounted_small_disk(tmp_path / "small", SMALL_DISK) as mount:
        yield mount


def leftovers(workdir: Path) -> list[str]:
    """Anything in the tasks folder that is not a whole task directory."""
    tasks = workdir / "tasks"
    names = [p.name for p in tasks.iterdir()] if tasks.exists() else []
    partial = [str(p.relative_to(workdir)) for p in workdir.rglob("*.part")]
    return [n for n in names if n.startswith(".")] + partial


@pytest.mark.parametrize("where", ["localhost", "ssh"])
def test_an_input_larger_than_the_disk_is_refused_naming_the_host_and_the_room_needed(
        where: str, home: Path, small_disk: Path, sshd: Any) -> None:
    workdir = small_disk / "work"
    if where == "ssh":
        with open(home / "hosts.yaml", "a") as f:
            f.write(ssh_host(sshd, "tight", workdir))
    else:
        (home / "hosts.yaml").write_text(f"hosts:\n  tight:\n    workdir: {workdir}\n")
    big = np.ones(4 * SMALL_DISK // 8)  # 4 MiB
    with RemoteExecutor("tight") as pool:
        with pytest.raises(Exception) as info:
            pool.submit(np.sum, big).result(timeout=60)
        text = str(info.value)
        assert text.startswith("There is no room on tight for task "), text
        assert "it needs 4.2 MB in " in text and "Free some space there" in text
        assert "set 'workdir:' of tight to a file system with room" in text
        assert "Traceback" not in text and "\n" not in text
        assert leftovers(workdir) == []  # nothing half-written is left to fill the disk
        assert pool.submit(np.sum, np.ones(10)).result(timeout=60) == 10.0  # the host goes on


def test_a_glob_through_link_loops_ends_and_finds_each_file_once(tmp_path: Path) -> None:
    agent = Agent(str(tmp_path / "work"))
    work = TaskPaths(agent.op_mkdir(TASK)).work
    (work / "a" / "b").mkdir(parents=True)
    for name in ("top.csv", "a/one.csv", "a/b/two.csv", "a/b/not.txt"):
        (work / name).write_text(name)
    (work / "a" / "b" / "up").symlink_to(work / "a")  # a loop: a/b/up/b/up/...
    (work / "a" / "self").symlink_to(".")
    began = time.monotonic()
    found = agent.files.op_glob(TASK, ["**/*.csv"])
    assert time.monotonic() - began < 2
    assert sorted(f["name"] for f in found["files"]) == ["a/b/two.csv", "a/one.csv", "top.csv"]
    assert found["stopped"] is None
    everything = agent.files.op_glob(TASK, ["a"])  # a folder named: its files, links not followed
    assert sorted(f["name"] for f in everything["files"]) == [
        "a/b/not.txt", "a/b/two.csv", "a/one.csv"]


def test_a_glob_stops_at_its_cap_on_files_and_on_time_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for n in range(60):
        (root / f"f{n:02}.dat").write_bytes(b"x")
    capped = _Finder(str(root), limit=50)
    capped.search("*.dat")
    assert len(capped.found) == 50 and capped.stopped == "it matched more than 50 files"
    slow = _Finder(str(root), seconds=0.0)
    time.sleep(0.01)
    slow.search("**")
    assert slow.stopped == "searching took longer than 0 s"


def test_a_collect_cut_short_or_with_refused_names_says_so_in_the_cells_summary() -> None:
    collected = Collected(["r0.csv"], stopped="it matched more than 10000 files",
                          patterns=["out/*.csv", "*.log"])
    collected.refused.append("../../etc/passwd")
    assert collected.notes() == [
        "--collect out/*.csv *.log stopped early (it matched more than 10000 files): the 1 "
        "files found by then were copied; narrow the pattern to get the others",
        "--collect: refused file names from the host that point outside this folder: "
        "../../etc/passwd"]
