"""What a cell can call while it runs as a task: progress reports.

Kept apart from the package's heavier modules so that a task importing it pays nothing.
"""

from __future__ import annotations

import os
import time

from ..wire.taskdir import TaskPaths, write_json

_MIN_INTERVAL = 0.1  # seconds between two writes of the progress file
_last_write = 0.0


def progress(done: float, total: float | None = None, message: str = "") -> None:
    """Report how far the task has got; shown live in the notebook.

    Outside a task (a cell run locally) this does nothing, so the same code runs both ways.
    Writes are rate-limited, except the last one (done == total), which is never dropped.
    """
    global _last_write
    root = os.environ.get("REMOTE_MAGIC_TASK_DIR")
    if not root:
        return
    now = time.monotonic()
    final = total is not None and done >= total
    if not final and now - _last_write < _MIN_INTERVAL:
        return
    _last_write = now
    write_json(TaskPaths(root).progress,
               {"done": done, "total": total, "message": str(message), "time": time.time()})
