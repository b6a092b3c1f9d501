"""How a task's output is shown in the notebook cell: IPython's streams and displays."""

from __future__ import annotations

import sys
from typing import Any, Callable

from IPython.display import clear_output, display

from .output import OutputStream


def write(stream: str, text: str) -> None:
    target = sys.stdout if stream == "stdout" else sys.stderr
    target.write(text)
    target.flush()


def show(entry: dict[str, Any], after_clear: Callable[[], None] | None = None) -> None:
    """One display entry, as the cell itself would have produced it here."""
    if entry.get("kind") == "clear":
        clear_output(wait=entry.get("wait", False))
        if after_clear is not None:
            after_clear()
        return
    options: dict[str, Any] = {"metadata": entry.get("metadata") or None}
    if entry.get("display_id"):
        options.update(display_id=entry["display_id"], update=entry.get("update", False))
    if entry.get("kind") == "object":
        display(entry["object"], include=entry.get("include") or None,
                exclude=entry.get("exclude") or None, **options)
    else:
        display(entry.get("data") or {}, raw=True, **options)


def cell_stream(decode: Callable[[bytes], Any],
                after_clear: Callable[[], None] | None = None) -> OutputStream:
    """A stream into the current cell; `after_clear` runs after each `clear_output`."""
    return OutputStream(write, lambda entry: show(entry, after_clear), decode=decode)


def displays_only(decode: Callable[[bytes], Any]) -> OutputStream:
    """For results that land in a later cell: their displays, but neither the text (it was
    the task's, not this cell's) nor `clear_output` (it would clear this cell)."""
    return OutputStream(write, lambda entry: entry.get("kind") == "clear" or show(entry),
                        text=False, decode=decode)
