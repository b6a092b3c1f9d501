"""A real file system with little room, for the tests of a full disk."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_disk(mount: Path, size: int) -> Iterator[Path]:
    """A tmpfs of `size` bytes mounted at `mount` (made here) while the block runs (root
    only: the test is skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mount.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                    str(mount)], check=True, capture_output=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
