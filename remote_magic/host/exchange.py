"""The bytes of one agent request, beside its JSON: what came with it and what goes back.

Most operations take JSON arguments and answer JSON. The few that move file contents (staging,
uploads, reading results, streaming a file back) get the request's `Exchange` instead of
sharing the agent's attributes, so what a request carries never outlives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


def _nowhere(chunk: bytes) -> None:
    raise RuntimeError("this request cannot stream an answer")


@dataclass
class Exchange:
    payload: bytes = b""  # the bytes the request came with
    payload_out: bytes = b""  # the bytes the answer carries
    stream: Callable[[bytes], None] = field(default=_nowhere)  # one chunk, ahead of the answer
