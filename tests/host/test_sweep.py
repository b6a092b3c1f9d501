"""Leftovers of killed agents and kernels (staging folders, `.part` files, prepare folders)
are swept once idle for long, and what is still in use is left alone."""

from __future__ import annotations

import os
import time
from pathlib import Path

from remote_magic.client.paths import STALE_PREPARE, data_dir
from remote_magic.client.prepare import TaskOptions, _sweep_once, prepare_cell
from remote_magic.host.agent import Agent
from remote_magic.host.fileops import STALE_TEMP

TASK = "0123456789abcdef"


def aged(path: Path, seconds: float) -> Path:
    """Make everything in `path` look untouched for `seconds`."""
    then = time.time() - seconds
    for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.utime(item, (then, then), follow_symlinks=False)
    return path


def folder(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir(parents=True, mode=0o700)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def test_an_agent_start_sweeps_what_killed_agents_left(tmp_path: Path) -> None:
    tasks = tmp_path / "work" / "tasks"
    Agent(str(tmp_path / "work"))  # makes the work directory, private
    old = STALE_TEMP + 60
    stale_stage = aged(folder(tasks / f".stage-{TASK}-00000001", {"inputs.rmns": b"x" * 10}), old)
    fresh_stage = folder(tasks / f".stage-{TASK}-00000002", {"inputs.rmns": b"x"})
    trash = folder(tasks / f".trash-{TASK}-00000003", {"state.json": b"{}"})
    task = folder(tasks / TASK, {})
    (task / "work").mkdir()
    stale_part = task / ".outputs.rmns.123.abcd1234.part"
    stale_part.write_bytes(b"half")
    aged(stale_part, old)
    fresh_part = task / "work" / ".data.csv.456.abcd1234.part"
    fresh_part.write_bytes(b"being written")
    kept = task / "work" / ".hidden.part.txt"  # the user's own file, however old
    kept.write_bytes(b"mine")
    aged(kept, old)

    Agent(str(tmp_path / "work")).files.sweep()
    left = sorted(p.name for p in tasks.iterdir())
    assert left == sorted([fresh_stage.name, TASK])
    assert not stale_stage.exists() and not trash.exists() and not stale_part.exists()
    assert fresh_part.exists() and kept.exists()


def test_a_prepare_folder_left_by_a_killed_kernel_goes_at_the_next_kernels_first_cell(
        home: Path) -> None:
    root = data_dir() / "tasks"
    root.mkdir(parents=True, exist_ok=True)
    stale = aged(folder(root / ".prepare-killed", {"inputs.rmns": b"x" * 1000}),
                 STALE_PREPARE + 60)
    busy = folder(root / ".prepare-busy", {"inputs.rmns": b"x"})  # another kernel, right now
    _sweep_once.cache_clear()
    from remote_magic.client.core import Client

    client = Client()
    try:
        prepare_cell("y = 1", {}, client.host(), TaskOptions())
    finally:
        client.close()
    assert not stale.exists() and busy.exists()
