"""The scheduler's last answer, shared by the agents of all of a user's kernels on a host.

Login nodes ask users to query the scheduler rarely (every 30-120 s at some centres), and
every kernel has an agent of its own: left to themselves, ten kernels would query ten times
as often. So the answer lives in the work directory (`queue/<scheduler>.json`), under a lock
(`queue/<scheduler>.lock`): an agent that finds it younger than the host's `scheduler_poll`
uses it, and only the one that finds it older asks the scheduler, about the jobs of every
agent (each one adds the jobs it wants to hear of to the file, `wanted`), and writes the
answer for the others. A job added since the last answer is "not asked about yet" until the
next one.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..wire.states import FINAL_STATES
from ..wire.taskdir import read_json, write_json
from .schedulers import JobState


@dataclass
class Answer:
    """A scheduler's answer: when it was asked (wall clock), about which jobs, what it said,
    and the jobs the agents want to hear of next time."""

    asked_at: float = 0.0
    asked_for: set[str] = field(default_factory=set)
    jobs: dict[str, JobState] = field(default_factory=dict)
    wanted: set[str] = field(default_factory=set)

    def age(self) -> float:
        return time.time() - self.asked_at

    def still_wanted(self) -> set[str]:
        """The jobs to ask about next time: those added since this answer, and those it
        says are still in the queue (or could not say); not those it says have ended, nor
        those the scheduler no longer knows (their agents settle them)."""
        return (self.wanted - self.asked_for) | {
            j for j in self.asked_for
            if j in self.jobs and self.jobs[j].state not in FINAL_STATES}


class QueueCache:
    """The shared answers of one work directory's schedulers."""

    def __init__(self, workdir: Path) -> None:
        self.folder = workdir / "queue"

    @contextmanager
    def locked(self, scheduler: str) -> Iterator[Answer]:
        """The last answer, read under the scheduler's lock, held until the block ends (so
        that one agent asks while the others wait for its answer); `save` within it."""
        self.folder.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.folder / f"{scheduler}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW,
                     0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:  # a file system without locks: at worst, two agents both ask
                pass
            yield _load(read_json(self.folder / f"{scheduler}.json"))
        finally:
            os.close(fd)

    def save(self, scheduler: str, answer: Answer) -> None:
        write_json(self.folder / f"{scheduler}.json", {
            "asked_at": answer.asked_at, "asked_for": sorted(answer.asked_for),
            "jobs": {j: asdict(s) for j, s in answer.jobs.items()},
            "wanted": sorted(answer.wanted)})


def _load(data: Any) -> Answer:
    """The file's answer; an empty one (asked long ago) if it is missing or damaged."""
    try:
        return Answer(float(data["asked_at"]), set(data["asked_for"]),
                      {j: JobState(**s) for j, s in data["jobs"].items()},
                      set(data["wanted"]))
    except (TypeError, KeyError, ValueError, AttributeError):
        return Answer()
