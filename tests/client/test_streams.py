"""Parallel streams (client/transport/streams.py): how many a link's round trip calls for, the
ranges they take, the bytes of a range of what a serializer yields, and running them."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from remote_magic.client.transport.streams import (
    PARALLEL_MIN,
    STREAMS_MAX,
    ranges,
    run_parallel,
    slice_pieces,
    streams_for,
)
from remote_magic.wire.serialization import pickle_namespace

MIB = 1 << 20


def test_a_near_host_gets_one_stream_and_a_far_one_several() -> None:
    assert streams_for(0.0002) == 1  # loopback
    assert streams_for(0.02) == 4
    assert streams_for(0.3) == STREAMS_MAX == 6


@pytest.mark.parametrize("size", [PARALLEL_MIN, PARALLEL_MIN + 1, 10 * PARALLEL_MIN + 12345])
def test_ranges_cover_the_file_once_in_whole_chunks(size: int) -> None:
    parts = ranges(size, 4, 4 * MIB)
    assert len(parts) <= 4 and parts[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in zip(parts, parts[1:]))
    assert sum(n for _, n in parts) == size
    assert all(n % (4 * MIB) == 0 for _, n in parts[:-1])


def test_a_small_file_or_one_stream_is_one_range() -> None:
    assert ranges(PARALLEL_MIN - 1, 8, 4 * MIB) == [(0, PARALLEL_MIN - 1)]
    assert ranges(10 * PARALLEL_MIN, 1, 4 * MIB) == [(0, 10 * PARALLEL_MIN)]


def test_a_range_of_pickled_bytes_is_what_the_file_holds_there() -> None:
    pickled = pickle_namespace({"a": np.arange(500_000, dtype=np.float64), "b": "text"})
    try:
        whole = b"".join(bytes(c) for c in pickled.chunks())
        for offset, length in [(0, 10), (3, 1_000_000), (1_000_000, len(whole) - 1_000_000),
                               (len(whole) - 1, 1), (17, 0)]:
            pieces = list(slice_pieces(pickled.chunks(), offset, length, 65536))
            assert b"".join(bytes(p) for p in pieces) == whole[offset:offset + length]
            assert all(p.nbytes <= 65536 for p in pieces)
    finally:
        pickled.release()


def test_the_first_error_is_raised_once_every_stream_ended() -> None:
    ended: list[int] = []

    def work(index: int, offset: int, length: int) -> int:
        if index == 1:
            raise OSError("stream 1 broke")
        ended.append(index)
        return offset + length

    with pytest.raises(OSError, match="stream 1 broke"):
        run_parallel(work, [(0, 1), (1, 1), (2, 1)], lambda: None)
    assert sorted(ended) == [0, 2]
    assert run_parallel(lambda i, o, n: o + n, [(0, 1), (1, 1)], lambda: None) == [1, 2]


def test_an_interrupted_caller_stops_the_other_streams() -> None:
    stop = threading.Event()

    def work(index: int, offset: int, length: int) -> None:
        if index == 0:
            raise KeyboardInterrupt
        stop.wait(10)  # a transfer that ends when its channel closes

    with pytest.raises(KeyboardInterrupt):
        run_parallel(work, [(0, 1), (1, 1)], stop.set)
    assert stop.is_set()
