"""The state file is a log of whole JSON lines (taskdir): a change frees no inode, the record
is the last line that parses, and a line cut short is passed over and never joined to the
next one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from remote_magic.wire.states import State
from remote_magic.wire.taskdir import TaskPaths, parse_state, read_state, set_state


def test_each_change_appends_a_line_to_the_same_file(tmp_path: Path) -> None:
    paths = TaskPaths(tmp_path)
    set_state(paths, State.SUBMITTED, launcher="process")
    inode = paths.state.stat().st_ino
    set_state(paths, State.RUNNING, pid=12)
    set_state(paths, State.COMPLETED)
    assert paths.state.stat().st_ino == inode  # appended to, not replaced: nothing freed
    lines = paths.state.read_bytes().splitlines()
    assert [json.loads(line)["state"] for line in lines] == ["submitted", "running", "completed"]
    record = read_state(paths)
    assert record["state"] == "completed" and record["pid"] == 12
    assert record["launcher"] == "process" and set(record["history"]) == {
        "submitted", "running", "completed"}
    assert oct(paths.state.stat().st_mode & 0o777) == "0o600"


def test_a_line_cut_short_is_passed_over_and_the_next_starts_afresh(tmp_path: Path) -> None:
    paths = TaskPaths(tmp_path)
    set_state(paths, State.RUNNING)
    with open(paths.state, "ab") as f:  # a writer that died half-way through its line
        f.write(b'{"state": "compl')
    assert read_state(paths)["state"] == "running"
    set_state(paths, State.FAILED, "it broke")
    assert read_state(paths)["state"] == "failed"
    assert paths.state.read_bytes().splitlines()[-1].startswith(b'{"history"')


def test_a_file_of_one_object_reads_as_its_record(tmp_path: Path) -> None:
    """As an earlier version wrote it (one JSON object, no newline), and as tests write it."""
    paths = TaskPaths(tmp_path)
    paths.state.write_text(json.dumps({"state": "running", "history": {"running": 1.0}}))
    assert read_state(paths)["state"] == "running"
    set_state(paths, State.COMPLETED)
    record = read_state(paths)
    assert record["state"] == "completed" and record["history"]["running"] == 1.0


def test_no_record_at_all_is_none_and_reads_as_prepared(tmp_path: Path) -> None:
    assert parse_state(b"") is None and parse_state(b"\x00garbage") is None
    assert parse_state(b"[1, 2]\n") is None  # JSON, but not a record
    paths = TaskPaths(tmp_path)
    assert read_state(paths)["state"] == "prepared"
    paths.state.write_bytes(b"\x00garbage")
    assert read_state(paths)["state"] == "prepared"


def test_a_symlink_in_place_of_the_state_file_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    paths = TaskPaths(tmp_path / "task")
    paths.root.mkdir()
    os.symlink(target, paths.state)
    with pytest.raises(OSError):  # refused (ELOOP): the task's directory is not as we left it
        set_state(paths, State.RUNNING)
    assert target.read_text() == "untouched"
