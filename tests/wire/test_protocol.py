"""The framing between the kernel and the agent: whatever way the bytes are cut on the way
(a pipe, an SSH channel), the reader gives back the same messages and payloads, in order."""

from __future__ import annotations

import os

import pytest

from remote_magic.wire.protocol import _HEADER, MAX_JSON, FrameReader, encode


def _messages() -> list[tuple[dict, bytes]]:
    return [({"id": 1, "op": "hello"}, b""), ({"stream": 2}, os.urandom(300_000)),
            ({"event": "ended", "task": "t"}, b"x"), ({"id": 3, "é": "ü"}, os.urandom(5))]


@pytest.mark.parametrize("piece", [1, 7, 4096, 65_536, 10**7])
def test_frames_cut_anywhere_come_back_whole_and_in_order(piece: int) -> None:
    messages = _messages()
    wire = b"".join(encode(m, p) for m, p in messages)
    reader = FrameReader()
    got = []
    for start in range(0, len(wire), piece):
        got += reader.feed(wire[start:start + piece])
    assert got == messages
    assert reader.feed(b"") == []


def test_a_header_announcing_an_oversized_message_is_refused() -> None:
    with pytest.raises(ValueError, match="oversized"):
        FrameReader().feed(_HEADER.pack(MAX_JSON + 1, 0))


@pytest.mark.parametrize("cut", [0, 1, 17, 299_999])
def test_a_frame_taken_halfway_gives_what_came_and_what_is_still_to_come(cut: int) -> None:
    """A reader that moves a payload's rest itself (into a file) takes the frame from the
    reader once its header is whole; the frames after it are read as before."""
    payload = os.urandom(300_000)
    first = encode({"stream": 2}, payload)
    start = len(first) - len(payload)
    reader = FrameReader()
    assert reader.feed(first[:start - 1]) == []
    assert reader.pending() is None  # the header is not whole yet
    assert reader.feed(first[start - 1:start + cut]) == []
    assert reader.pending() == {"stream": 2}
    came, rest = reader.take()
    assert came == payload[:cut] and rest == len(payload) - cut
    assert reader.pending() is None
    after = encode({"id": 3}, b"xyz")
    assert reader.feed(after) == [({"id": 3}, b"xyz")]


def test_a_whole_frame_is_not_pending() -> None:
    reader = FrameReader()
    assert reader.feed(encode({"id": 1}, b"ab")) == [({"id": 1}, b"ab")]
    assert reader.pending() is None
    reader.feed(encode({"id": 2}, b""))
    assert reader.pending() is None
