"""The files of one task directory, and how they are written.

This module is shared by the kernel side, the resident agent and the runner, so it imports
only the standard library. Every file that another process may read while it changes is
written atomically (temp file + rename): a reader sees the old version or the new one, never
half of one. Status comes from these files alone; a scheduler is asked only for queue state.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

STATES = ("prepared", "submitted", "queued", "running",
          "completed", "failed", "cancelled", "timed_out", "lost")
FINAL_STATES = frozenset({"completed", "failed", "cancelled", "timed_out", "lost"})

# How often a running task's supervisor touches its heartbeat file, in seconds.
HEARTBEAT_INTERVAL = 2.0

_TASK_ID = re.compile(r"[0-9a-f]{8,64}")


def valid_task_id(task_id: str) -> str:
    """Task ids end up in paths and remote command lines: accept only lowercase hex."""
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        raise ValueError(f"not a valid task id: {task_id!r}")
    return task_id


class TaskPaths:
    """Names every file of one task, so no other module spells a file name."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    spec = property(lambda self: self.root / "spec.json")
    inputs = property(lambda self: self.root / "inputs.rmns")
    state = property(lambda self: self.root / "state.json")
    pids = property(lambda self: self.root / "pids.json")
    heartbeat = property(lambda self: self.root / "heartbeat")
    stdout = property(lambda self: self.root / "stdout")
    stderr = property(lambda self: self.root / "stderr")
    progress = property(lambda self: self.root / "progress.json")
    outputs = property(lambda self: self.root / "outputs.rmns")
    displays = property(lambda self: self.root / "displays.rmns")
    events = property(lambda self: self.root / "events")  # displays as they happen (JSON lines)
    result = property(lambda self: self.root / "result.json")
    error = property(lambda self: self.root / "error.json")
    exitcode = property(lambda self: self.root / "exitcode")
    cancel = property(lambda self: self.root / "cancel")
    work = property(lambda self: self.root / "work")
    # batch hosts only: the job script, and the scheduler's own output files
    job_script = property(lambda self: self.root / "job.sh")
    job_out = property(lambda self: self.root / "job.out")
    job_err = property(lambda self: self.root / "job.err")



def write_atomic(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write a whole file so that readers never see it half-written."""
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, sort_keys=True))


def read_json(path: Path, default: Any = None) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return default
    except ValueError:  # an old-style writer or a truncated copy: treat as absent
        return default


def read_state(paths: TaskPaths) -> dict[str, Any]:
    """The task's state record: {"state", "history": {state: time}, "reason"}."""
    return read_json(paths.state) or {"state": "prepared", "history": {}, "reason": None}


def set_state(paths: TaskPaths, state: str, reason: str | None = None,
              when: float | None = None, **extra: Any) -> dict[str, Any]:
    """Move the task to `state`, keeping when each state was entered."""
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    record = read_state(paths)
    record["state"] = state
    record.setdefault("history", {})[state] = when if when is not None else time.time()
    if reason is not None or state in FINAL_STATES:
        record["reason"] = reason
    record.update(extra)
    write_json(paths.state, record)
    return record


def read_exitcode(paths: TaskPaths) -> int | None:
    try:
        text = paths.exitcode.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def make_task_dir(root: Path) -> TaskPaths:
    """Create a task directory private to the user (0700), with its working directory."""
    root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    root.mkdir(mode=0o700, exist_ok=True)
    os.chmod(root, 0o700)
    paths = TaskPaths(root)
    paths.work.mkdir(mode=0o700, exist_ok=True)
    return paths
