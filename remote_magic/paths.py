"""Where this machine keeps the task store and the kernel's copy of each task."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """`$REMOTE_MAGIC_HOME`, else the user data directory (e.g. ~/.local/share/remote_magic)."""
    override = os.environ.get("REMOTE_MAGIC_HOME")
    if override:
        path = Path(override).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir("remote_magic", appauthor=False))
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
