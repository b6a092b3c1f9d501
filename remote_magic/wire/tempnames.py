"""Temporary names for files written whole, beside their target, that are always legal names.

A file is written under a temporary name in its target's folder and then renamed over the
target, so that no reader ever sees half of it. Built from the target's whole name plus a
process id, a token and a suffix, the temporary name passes NAME_MAX (255 bytes on Linux and
macOS) when the target's own name is near that limit, and the write fails with ENAMETOOLONG
although the target's name is fine. So only the start of the target's name is kept: enough to
tell whose temporary file it is. Standard library only: the agent uses it on the host.
"""

from __future__ import annotations

import os
import secrets
from pathlib import PurePath
from typing import TypeVar

KEEP = 100  # bytes of the target's name kept: leaves 155 for what is added to it
P = TypeVar("P", bound=PurePath)  # a local Path, or a PurePosixPath on the host


def short(name: str, limit: int = KEEP) -> str:
    """`name` cut to at most `limit` bytes as the file system stores it, on a character
    boundary (a name that is not UTF-8 is cut by its bytes, as the file system sees it)."""
    encoded = os.fsencode(name)
    if len(encoded) <= limit:
        return name
    cut = encoded[:limit]
    for drop in range(4):  # a UTF-8 character is at most 4 bytes: drop a cut one whole
        whole = cut[:limit - drop]
        try:
            whole.decode("utf-8")
        except UnicodeDecodeError:
            continue
        return os.fsdecode(whole)
    return os.fsdecode(cut)  # not UTF-8 at all: its bytes as they are


def part_tag() -> str:
    """The end of a temporary file's name: `PID.TOKEN.part`, unique to this writer (the same
    file may be written by two tasks at once), and recognisable by the agent's sweep."""
    return f"{os.getpid()}.{secrets.token_hex(4)}.part"


def temp_beside(target: P, tag: str) -> P:
    """`.NAME.TAG` in the target's folder, NAME being the start of the target's name:
    e.g. `temp_beside(path, part_tag())`."""
    return target.with_name(f".{short(target.name)}.{tag}")


def temp_prefix(target: PurePath) -> str:
    """A `tempfile.mkstemp` prefix for writing `target` whole: `.NAME.`, NAME as above."""
    return f".{short(target.name)}."
