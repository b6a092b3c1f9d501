"""Where this machine keeps the task store and the kernel's copy of each task."""

from __future__ import annotations

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
    """
    override = os.environ.get("REMOTE_MAGIC_HOME")
    if override:
        path = Path(override).expanduser()
        remedy = "Set $REMOTE_MAGIC_HOME to a directory of your own"
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir("remote_magic", appauthor=False))
        remedy = "Set $REMOTE_MAGIC_HOME to a directory of your own instead"
    problem = trust_problem(str(path), create=True)
    if problem is not None:
        raise RemoteMagicError(describe_problem(
            problem, "the directory of remote_magic's task store", remedy))
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


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

