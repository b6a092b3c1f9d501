"""ChunkPipe stands in for paramiko's BufferedPipe on bulk channels: the same contract (bytes
in order, reads of at most n, timeouts, end of stream), kept as a queue of packets."""

from __future__ import annotations

import os
import threading
import time

import pytest
from paramiko.buffered_pipe import PipeTimeout

from remote_magic.client.transport.chunk_pipe import ChunkPipe


def test_reads_of_any_size_give_back_the_bytes_fed_in_order() -> None:
    pipe = ChunkPipe()
    data = os.urandom(100_000)
    cuts = [0, 1, 7, 4096, 4097, 32_768, 60_000, 99_999, 100_000]
    for start, end in zip(cuts, cuts[1:]):
        pipe.feed(data[start:end])
    assert len(pipe) == len(data)
    out = bytearray()
    for size in [1, 3, 4095, 5000, 32_768, 1, 10**6]:
        piece = pipe.read(size)
        assert 0 < len(piece) <= size
        out += piece
    assert bytes(out) == data and len(pipe) == 0 and not pipe.read_ready()


def test_a_read_waits_for_data_fed_from_another_thread() -> None:
    pipe = ChunkPipe()
    threading.Timer(0.05, pipe.feed, [b"late"]).start()
    assert pipe.read(10, timeout=5) == b"late"


def test_an_empty_pipe_times_out_and_a_closed_one_ends() -> None:
    pipe = ChunkPipe()
    with pytest.raises(PipeTimeout):
        pipe.read(10, timeout=0.0)
    started = time.monotonic()
    with pytest.raises(PipeTimeout):
        pipe.read(10, timeout=0.05)
    assert time.monotonic() - started >= 0.05
    pipe.feed(b"last")
    pipe.close()
    assert pipe.read(10) == b"last"  # what came before the close is still read
    assert pipe.read(10) == b""


def test_the_event_follows_whether_there_is_something_to_read() -> None:
    pipe = ChunkPipe()
    event = threading.Event()
    pipe.set_event(event)
    assert not event.is_set()
    pipe.feed(b"abc")
    assert event.is_set()
    assert pipe.read(2) == b"ab" and event.is_set()
    assert pipe.read(2) == b"c" and not event.is_set()
    pipe.feed(b"xyz")
    assert pipe.read(1) == b"x"
    assert pipe.empty() == b"yz" and len(pipe) == 0 and not event.is_set()
