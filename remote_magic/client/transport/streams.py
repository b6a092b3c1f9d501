"""Parallel streams for large transfers to a distant host: how many, over which ranges.

One SSH channel may have only so many bytes unacknowledged: its peer's flow-control window
(OpenSSH's channels: 2 MiB), whichever client sends. Over a link with a round trip of `rtt`
seconds a channel therefore moves at most a window per `rtt`: 100 MB/s at 20 ms, 20 MB/s at
100 ms, whatever the link's bandwidth. scp has the same ceiling. Several channels, each with
its own window, each to a transfer agent of its own, move several windows per round trip; on
a near host (a round trip under STREAM_RTT, as on a LAN or this machine's loopback) the CPU
is the limit instead, and one stream is best.

A file in parallel streams is cut into one range per stream; each stream sends or fetches its
range at its own place in the file, and the file is whole only once every range is.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Callable, TypeVar

PARALLEL_MIN = 32 * 1024 * 1024  # bytes: a smaller file goes in one stream
STREAM_RTT = 0.005  # seconds of round trip per stream (a window per 5 ms: 400 MB/s each)
# sshd allows 10 sessions per connection unless told otherwise (MaxSessions): the agent,
# the spare agent and the odd command need theirs too
STREAMS_MAX = 6

T = TypeVar("T")


def streams_for(rtt: float) -> int:
    """How many streams fill a link whose round trip takes `rtt` seconds."""
    return max(1, min(STREAMS_MAX, math.ceil(rtt / STREAM_RTT)))


def ranges(size: int, streams: int, align: int) -> list[tuple[int, int]]:
    """[(offset, length)] cutting `size` bytes into at most `streams` ranges, each but the
    last a multiple of `align` long (the transfers' chunk)."""
    if streams <= 1 or size < PARALLEL_MIN:
        return [(0, size)]
    step = -(-size // streams)
    step = -(-step // align) * align
    return [(offset, min(step, size - offset)) for offset in range(0, size, step)]


def slice_pieces(pieces: Iterable[bytes | memoryview], offset: int, length: int,
                 piece_max: int) -> Iterator[memoryview]:
    """The bytes from `offset` to `offset + length` of what `pieces` yields in order, as
    views of at most `piece_max` bytes (no copies)."""
    position, end = 0, offset + length
    for piece in pieces:
        view = memoryview(piece).cast("B") if not isinstance(piece, bytes) else memoryview(piece)
        start, stop = max(offset - position, 0), min(end - position, view.nbytes)
        position += view.nbytes
        for at in range(start, stop, piece_max):
            yield view[at:min(at + piece_max, stop)]
        if position >= end:
            return


def file_pieces(path: Path, offset: int, length: int, piece_max: int) -> Iterator[bytes]:
    """`length` bytes of the file at `path` from `offset`, read `piece_max` at a time."""
    with open(path, "rb") as f:
        f.seek(offset)
        while length > 0:
            data = f.read(min(piece_max, length))
            if not data:
                raise OSError(f"{path} is shorter than it was a moment ago")
            length -= len(data)
            yield data


def run_parallel(work: Callable[[int, int, int], T], parts: list[tuple[int, int]],
                 stop: Callable[[], None]) -> list[T]:
    """`work(index, offset, length)` for every part, each in a thread of its own (the first
    in this one); the first error is raised once all have ended. Should this thread be
    interrupted (Ctrl-C), `stop` ends the others' transfers (it closes their channels)."""
    results: list[T | None] = [None] * len(parts)
    errors: list[BaseException] = []

    def one(index: int) -> None:
        try:
            results[index] = work(index, *parts[index])
        except Exception as exc:  # noqa: BLE001 - raised below, once all have ended
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,), name=f"stream-{i}", daemon=True)
               for i in range(1, len(parts))]
    for thread in threads:
        thread.start()
    try:
        one(0)
        for thread in threads:
            thread.join()
    except BaseException:
        stop()
        raise
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


def open_at(path: str | os.PathLike[str], offset: int) -> int:
    """A descriptor of its own on an existing file, at `offset`: each stream of a download
    writes its range through one, since duplicates of a descriptor share one offset."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    os.lseek(fd, offset, os.SEEK_SET)
    return fd
