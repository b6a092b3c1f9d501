"""The scheduler's answer shared by the agents of all of a user's kernels on a host: within
the host's scheduler_poll, one query answers them all, and a job one of them added since is
asked about in the next query, whoever makes it. Live SLURM; `squeue` is counted by a
wrapper ahead of it on PATH."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from remote_magic.host.batchops import BatchOps
from remote_magic.host.queuecache import Answer, QueueCache
from remote_magic.host.schedulers import JobState
from remote_magic.host.schedulers.slurm import Slurm
from remote_magic.wire.taskdir import TaskPaths


def _counted_squeue(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    real = shutil.which("squeue")
    assert real is not None
    count = folder / "squeue-calls"
    wrapper = folder / "bin" / "squeue"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho called >> "{count}"\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ['PATH']}")
    return count


def _calls(count: Path) -> int:
    return len(count.read_text().splitlines()) if count.exists() else 0


def test_two_kernels_agents_share_one_query_per_interval(tmp_path: Path, slurm: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    count = _counted_squeue(tmp_path, monkeypatch)
    jobs = [subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "sleep 60"],
                           capture_output=True, text=True, check=True).stdout.strip()
            for _ in range(2)]
    try:
        (tmp_path / "work").mkdir()
        shared = QueueCache(tmp_path / "work")
        first, second = (BatchOps(lambda task: TaskPaths(tmp_path / task), shared)
                         for _ in range(2))
        first.interval = second.interval = 30.0
        answer = first.ask(Slurm(), [jobs[0]])
        assert answer[jobs[0]].state in ("queued", "running") and _calls(count) == 1
        answer = second.ask(Slurm(), [jobs[1]])  # the other kernel, within the interval
        assert _calls(count) == 1 and answer[jobs[1]].state == ""  # not asked about yet
        assert answer[jobs[0]].state in ("queued", "running")  # the first one's answer
        saved = json.loads((tmp_path / "work" / "queue" / "slurm.json").read_text())
        assert saved["wanted"] == sorted(jobs)  # the second job is asked about next time
        saved["asked_at"] -= 31  # the interval has passed
        (tmp_path / "work" / "queue" / "slurm.json").write_text(json.dumps(saved))
        third = BatchOps(lambda task: TaskPaths(tmp_path / task), shared)
        third.interval = 30.0
        answer = third.ask(Slurm(), [])  # whoever asks next asks about every wanted job
        assert _calls(count) == 2
        assert {answer[j].state for j in jobs} <= {"queued", "running"}
        first.ask_again("slurm")  # it cancelled a job: its next ask is not held back
        first.ask(Slurm(), [jobs[0]])
        assert _calls(count) == 3
    finally:
        subprocess.run(["scancel", *jobs], capture_output=True)


def test_the_jobs_asked_about_next_time() -> None:
    """Those added since, and those still queued or not answered; not those that ended nor
    those the scheduler no longer knows (d), or they would be asked about forever."""
    answer = Answer(0.0, {"a", "b", "c", "d"},
                    {"a": JobState("running"), "b": JobState("completed"), "c": JobState("")},
                    {"a", "b", "c", "d", "e"})
    assert answer.still_wanted() == {"a", "c", "e"}


def test_a_damaged_shared_answer_is_an_old_one(tmp_path: Path) -> None:
    cache = QueueCache(tmp_path)
    (tmp_path / "queue").mkdir()
    (tmp_path / "queue" / "slurm.json").write_text("{not json")
    with cache.locked("slurm") as last:
        assert last.age() > 3600 and last.jobs == {}
