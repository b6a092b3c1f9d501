"""The bytes of one agent request, beside its JSON: what came with it and what goes back.

Most operations take JSON arguments and answer JSON. The few that move file contents (staging,
uploads, reading results, streaming a file back) get the request's `Exchange` instead of
sharing the agent's attributes, so what a request carries never outlives it.
"""

from __future__ import annotations

import errno
import os
import select
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from ..wire.diskwrite import write_all


class FileRange(NamedTuple):
    """Bytes of an open file to stream as a chunk's payload: the agent hands them from the
    page cache to its output pipe without copying them through Python (sendfile)."""

    fd: int
    offset: int
    size: int


def _nowhere(chunk: bytes | FileRange) -> None:
    raise RuntimeError("this request cannot stream an answer")


def deaf_wait(seconds: float) -> bool:
    """`Exchange.wait` where the kernel's input cannot be watched (a one-shot agent, whose
    input is read whole at its start): a plain pause."""
    time.sleep(seconds)
    return False


@dataclass
class Exchange:
    payload: bytes = b""  # the bytes the request came with
    payload_out: bytes = b""  # the bytes the answer carries
    # sends one chunk of a streamed answer, ahead of the answer itself
    stream: Callable[[bytes | FileRange], None] = field(default=_nowhere)
    # waits up to that many seconds; True if the kernel spoke meanwhile (or hung up), which
    # ends a request that waits on the host (a follow) without a message of its own
    wait: Callable[[float], bool] = field(default=deaf_wait)


def read_range(part: FileRange) -> bytes:
    """The bytes of `part`, for an output that is not a pipe the agent writes to itself."""
    data = os.pread(part.fd, part.size, part.offset)
    if len(data) < part.size:
        raise _shrank()
    return data


def send_range(out_fd: int, part: FileRange) -> None:
    """Write the bytes of `part` to `out_fd` (sendfile, else pread and write). Were the file
    cut short meanwhile, zeros fill the promised size, so that the framing holds, and the
    request fails."""
    offset, left = part.offset, part.size
    use_sendfile = True
    while left:
        if use_sendfile:
            try:
                sent = os.sendfile(out_fd, part.fd, offset, min(left, 1 << 20))
            except BlockingIOError:  # an output shared with the non-blocking input
                select.select([], [out_fd], [])
                continue
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSOCK,
                                     errno.EOPNOTSUPP):
                    raise
                use_sendfile = False  # not to this output (an older or another system)
                continue
        else:
            sent = write_all(out_fd, os.pread(part.fd, min(left, 1 << 20), offset))
        if not sent:
            write_all(out_fd, bytes(left))
            raise _shrank()
        offset += sent
        left -= sent


def _shrank() -> OSError:
    return OSError("the file was cut short while it was being sent: fetch it again")
