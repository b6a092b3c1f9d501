"""Framing of the messages between the kernel and the resident agent on a host.

A frame is a fixed header (JSON length, payload length), a JSON object, then raw payload
bytes. Requests carry an "id" that their response repeats; events carry "event" instead.
The same framing runs over a local pipe and over an SSH channel.
"""

from __future__ import annotations

import fcntl
import json
import struct
from typing import Any

F_SETPIPE_SZ = 1031  # Linux's fcntl to resize a pipe
PIPE_SIZE = 1 << 20  # the most an unprivileged process may ask for by default

_HEADER = struct.Struct(">IQ")
MAX_JSON = 64 * 1024 * 1024
# The agent's first bytes. A login shell may print to stdout before the agent starts (a banner,
# a module system's chatter); the kernel skips everything up to this marker.
MARKER = b"\x00remote_magic agent 1\n"


def encode_header(message: dict[str, Any], payload_size: int) -> bytes:
    """The frame's header and JSON; the payload follows it, sent separately (not copied)."""
    body = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(len(body), payload_size) + body


def encode(message: dict[str, Any], payload: bytes = b"") -> bytes:
    return encode_header(message, len(payload)) + payload


def widen_pipe(fd: int) -> None:
    """Give a pipe carrying frames 1 MiB instead of 64 KiB where the system allows it (Linux):
    a 4 MiB chunk then takes a sixteenth of the reads and writes on both of its ends. Not a
    pipe, or another system: left as it is."""
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, AttributeError):
        pass


class FrameReader:
    """Incremental parser: feed it bytes as they arrive, get whole messages back."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        """The messages `data` completes. Each payload is copied out of the buffer once (a
        slice of a bytearray copies, and bytes() of it again), and the messages read are
        dropped from the buffer in one step."""
        self._buf += data
        frames = []
        at = 0
        with memoryview(self._buf) as view:
            while len(view) - at >= _HEADER.size:
                json_len, payload_len = _HEADER.unpack_from(view, at)
                if json_len > MAX_JSON:
                    raise ValueError("protocol error: oversized message header")
                start = at + _HEADER.size
                end = start + json_len + payload_len
                if len(view) < end:
                    break
                frames.append((json.loads(bytes(view[start:start + json_len])),
                               bytes(view[start + json_len:end])))
                at = end
        del self._buf[:at]
        return frames

    def pending(self) -> dict[str, Any] | None:
        """The message of a frame whose header has come whole but whose payload has not: a
        reader that knows where that payload goes can move the rest itself (see `take`)."""
        if len(self._buf) < _HEADER.size:
            return None
        json_len, payload_len = _HEADER.unpack_from(self._buf)
        start = _HEADER.size
        if json_len > MAX_JSON or not start + json_len <= len(self._buf) < \
                start + json_len + payload_len:
            return None
        return json.loads(bytes(self._buf[start:start + json_len]))

    def take(self) -> tuple[bytes, int]:
        """Give up the pending frame: the part of its payload that came, and how many bytes
        of it are still to come, which the caller reads from the stream itself."""
        json_len, payload_len = _HEADER.unpack_from(self._buf)
        start = _HEADER.size + json_len
        came = bytes(self._buf[start:])
        self._buf.clear()
        return came, payload_len - len(came)
