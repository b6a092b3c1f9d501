"""A task's outputs file, sent while its runner is still writing it.

A task that returns a large array spends a good part of a second writing it into the task
directory, and a transfer that starts only then waits for all of it. A kernel that expects a
large result asks a spare agent of its own to follow the file instead: the bytes go out as
they are written, and the copy is whole about when the file is. The copy is worth keeping
only if the file it was made from became the task's outputs file, whole; the answer says
whether it did, and otherwise the kernel fetches the outputs as usual.

The runner writes the file once, front to back, under a temporary name, then renames it: a
reader never sees bytes that are not yet written (the file only grows as they are), the
file's header (written first) gives its final size, and the rename keeps the file itself.
"""

from __future__ import annotations

import os
from typing import Any

from ..wire.serialization import written_size
from ..wire.states import FINAL_STATES
from ..wire.taskdir import TaskPaths, read_state
from ..wire.tempnames import temp_prefix
from .exchange import Exchange, FileRange

CHUNK = 4 * 1024 * 1024  # bytes per streamed frame
POLL_FIRST = 0.002  # seconds between looks at a file that did not grow, at first ...
POLL_MAX = 0.05  # ... doubling up to this (a long task is looked at 20 times a second)


def follow_outputs(paths: TaskPaths, exchange: Exchange, min_size: int) -> dict[str, Any]:
    """Stream the task's outputs file as it is written, once it is found to be at least
    `min_size` bytes (smaller ones come with the task's end anyway). The answer gives the
    bytes sent, and "final": whether they are the whole outputs file of the ended task.

    The follow stops without a copy when the task ends with no such file, when the file
    stops growing short of its size (its writer was killed), or when the kernel speaks (it
    closed the connection, or wants the agent back)."""
    fd = -1
    poll = _Poll(exchange)
    try:
        while True:  # until a file is found and its header written
            ended = _ended(paths)  # read first: a file written before the end is seen below
            if fd < 0:
                fd = _open_outputs(paths)
            total = written_size(fd) if fd >= 0 else None
            if total is not None:
                break
            if ended:
                return {"size": 0, "final": False, "why": "no outputs file"}
            if poll.stopped():
                return {"size": 0, "final": False, "why": "stopped"}
        if total < min_size:
            return {"size": 0, "final": False, "why": "small"}
        sent = 0
        poll.reset()
        while sent < total:
            ended = _ended(paths)
            end = min(os.fstat(fd).st_size, total)
            if end > sent:
                size = min(end - sent, CHUNK)
                exchange.stream(FileRange(fd, sent, size))
                sent += size
                poll.reset()
            elif ended:
                return {"size": sent, "final": False, "why": "the file stopped short"}
            elif poll.stopped():
                return {"size": sent, "final": False, "why": "stopped"}
        poll.reset()
        while True:  # whole: is it the outputs file now? (the rename comes right after)
            ended = _ended(paths)
            if _same_file(fd, paths, total):
                return {"size": sent, "final": True}
            if ended or poll.stopped():
                return {"size": sent, "final": False, "why": "not the outputs file"}
    finally:
        if fd >= 0:
            os.close(fd)


class _Poll:
    """Waits between looks, shorter after progress; a kernel that speaks ends the follow."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.delay = POLL_FIRST

    def reset(self) -> None:
        self.delay = POLL_FIRST

    def stopped(self) -> bool:
        spoke = self.exchange.wait(self.delay)
        self.delay = min(self.delay * 2, POLL_MAX)
        return spoke


def _ended(paths: TaskPaths) -> bool:
    """The task has ended, or is gone (purged): nothing more will be written."""
    return not paths.root.is_dir() or read_state(paths)["state"] in FINAL_STATES


def _open_outputs(paths: TaskPaths) -> int:
    """The outputs file if it is there (whole), else the one being written (the newest
    under its temporary name); -1 if neither is."""
    prefix = temp_prefix(paths.outputs)
    candidates = [str(paths.outputs)]
    try:
        with os.scandir(paths.root) as entries:
            temps = [e for e in entries if e.name.startswith(prefix) and e.name.endswith(".tmp")]
        temps.sort(key=lambda e: e.stat().st_mtime_ns, reverse=True)
        candidates += [e.path for e in temps]
    except OSError:
        pass
    for path in candidates:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # not there, or renamed since it was listed
            continue
    return -1


def _same_file(fd: int, paths: TaskPaths, size: int) -> bool:
    try:
        final = os.stat(paths.outputs)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (final.st_dev, final.st_ino, final.st_size) == (mine.st_dev, mine.st_ino, size)
