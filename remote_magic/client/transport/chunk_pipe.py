"""A receive buffer for paramiko channels that carry bulk data.

paramiko keeps what a channel received in one flat array: a `recv(n)` that leaves data
behind moves all of that data to the array's front, and one that takes everything copies it
twice. With a 32 MiB window, reading a download a mebibyte at a time moved tens of
gigabytes per gigabyte received (downloads were CPU-bound, at half the speed or less), and
reading it all at once held three or four copies of the window (a fifth of a gigabyte on top
of a 1 GiB download). ChunkPipe keeps the packets as they came, in a queue: a read joins the first
packets up to `n` bytes and slices at most one, so each byte is copied once and at most the
window plus one read is held.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import paramiko
from paramiko.buffered_pipe import BufferedPipe, PipeTimeout


class ChunkPipe(BufferedPipe):
    """paramiko's BufferedPipe, holding its bytes as a queue of the packets received."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: deque[bytes] = deque()
        self._size = 0  # bytes held
        self._at = 0  # bytes of the first chunk already read

    def feed(self, data: bytes) -> None:
        with self._lock:
            if self._event is not None:
                self._event.set()
            if data:
                self._chunks.append(bytes(data))
                self._size += len(data)
            self._cv.notify_all()

    def read_ready(self) -> bool:
        with self._lock:
            return self._size > 0

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        """Up to `nbytes`, waiting at most `timeout` (None: for ever) for the first; b"" once
        the pipe is closed and empty."""
        with self._lock:
            if timeout is not None:
                deadline = time.monotonic() + timeout
            while self._size == 0 and not self._closed:
                if timeout is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise PipeTimeout()
                    self._cv.wait(left)
                else:
                    self._cv.wait()
            pieces = []
            wanted = nbytes
            while wanted > 0 and self._chunks:
                first = self._chunks[0]
                end = min(len(first), self._at + wanted)
                pieces.append(first if self._at == 0 and end == len(first)
                              else first[self._at:end])
                wanted -= end - self._at
                if end == len(first):
                    self._chunks.popleft()
                    self._at = 0
                else:
                    self._at = end
            if not pieces:  # closed, and all read
                return b""
            out = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            self._size -= len(out)
            if self._size == 0 and self._event is not None and not self._closed:
                self._event.clear()
            return out

    def set_event(self, event: threading.Event) -> None:
        with self._lock:
            self._event = event
            if self._closed or self._size > 0:
                event.set()
            else:
                event.clear()

    def empty(self) -> bytes:
        with self._lock:
            out = b"".join(self._chunks)[self._at:]
            self._chunks.clear()
            self._size = self._at = 0
            if self._event is not None and not self._closed:
                self._event.clear()
            return out

    def __len__(self) -> int:
        with self._lock:
            return self._size


def install(channel: paramiko.Channel) -> None:
    """Give a channel a ChunkPipe before anything can arrive on it (before its command is
    sent: paramiko feeds the buffer from its own thread, without a lock we could take)."""
    channel.in_buffer = ChunkPipe()
