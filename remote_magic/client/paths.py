"""Where this machine keeps the task store and the kernel's copy of each task."""

from __future__ import annotations

import functools
import os
import shutil
import time
from pathlib import Path

from ..errors import RemoteMagicError
from ..host.fileops import last_change
from ..wire.taskdir import describe_problem, trust_problem

PREPARE_PREFIX = ".prepare-"  # prepare.py prepares a task in data_dir()/tasks/.prepare-XXXX
STALE_PREPARE = 3600.0  # seconds: a prepare directory untouched this long has no kernel left


def data_dir() -> Path:
    """`$REMOTE_MAGIC_HOME`, else the user data directory (e.g. ~/.local/share/remote_magic).

    Created private (0700). The kernel unpickles what it keeps there (results copied from a
    host, inputs sent), so one that another user could write is refused, saying what to do.
    The whole check (every directory above it) runs on first use in this process and again
    whenever the directory itself is not the one checked (a new inode, owner or mode): it is
    asked for several times per task.
    """
    override = os.environ.get("REMOTE_MAGIC_HOME")
    if override:
        path = Path(override).expanduser()
        remedy = "Set $REMOTE_MAGIC_HOME to a directory of your own"
    else:
        path = _user_data_dir(os.environ.get("XDG_DATA_HOME"), os.environ.get("HOME"))
        remedy = "Set $REMOTE_MAGIC_HOME to a directory of your own instead"
    try:
        if _checked.get(path) == _identity(os.stat(path)):
            return path
    except OSError:  # not there (yet): checked and made below
        pass
    problem = trust_problem(str(path), create=True)
    if problem is not None:
        raise RemoteMagicError(describe_problem(
            problem, "the directory of remote_magic's task store", remedy))
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    _checked[path] = _identity(os.stat(path))
    return path


_checked: dict[Path, tuple[int, ...]] = {}  # data directories found trusted -> their identity


def _identity(info: os.stat_result) -> tuple[int, ...]:
    return info.st_dev, info.st_ino, info.st_mode, info.st_uid


@functools.lru_cache(maxsize=4)
def _user_data_dir(xdg_data_home: str | None, home: str | None) -> Path:
    """platformdirs' answer, which depends only on these variables (the arguments: the key)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("remote_magic", appauthor=False))


def sweep_prepares(root: Path, stale: float = STALE_PREPARE) -> list[str]:
    """Remove the `.prepare-*` directories in `root` that nothing touched for `stale` seconds.

    A kernel killed while preparing a task leaves one behind (as large as the task's inputs),
    and no kernel would ever look at it again. Another kernel may be preparing right now, so
    only directories idle for long are taken: a prepare writes its files as it goes. Returns
    the names removed.
    """
    removed = []
    now = time.time()
    try:
        entries = [e for e in os.scandir(root) if e.name.startswith(PREPARE_PREFIX)]
    except OSError:
        return removed
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and now - last_change(entry.path) > stale:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return removed

