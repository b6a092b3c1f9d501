"""A task's output, put into the notebook cell in the order it happened on the host.

The host reports printed text (stdout, stderr) and displays separately; each display carries
how far stdout and stderr had got when it happened. This module merges them back into one
sequence, while the task runs (chunks as the session brings them) or at once (results loaded
later), and hands each piece to the notebook: text to the cell's streams, displays and
`clear_output` to IPython's display machinery. Figures the cell left open at its end are kept
for last, after the cell's value, where the inline backend puts them.
"""

from __future__ import annotations

import base64
import pickle
from collections.abc import Callable, Iterable
from typing import Any

from ..client.session import Update

Write = Callable[[str, str], None]  # (stream name, text)
Show = Callable[[dict[str, Any]], None]  # an entry: display, update or clear


class _Text:
    """Bytes of one stream not yet written, and where they start in the task's file."""

    def __init__(self) -> None:
        self.start = 0
        self.data = b""

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    def add(self, text: str, at: int) -> None:
        data = text.encode("utf-8", errors="surrogateescape")
        if at < self.end:  # delivered twice (a fetch after the live stream): keep one copy
            data = data[self.end - at:]
        elif at > self.end and not self.data:
            self.start = at
        self.data += data

    def take(self, limit: int | None, whole_lines: bool = False) -> str:
        """The text up to `limit` (an offset in the task's file; None: all of it), or with
        `whole_lines` all of it up to its last line break."""
        count = len(self.data) if limit is None else max(0, min(len(self.data),
                                                                limit - self.start))
        if whole_lines:
            count = self.data.rfind(b"\n", 0, count) + 1
        piece, self.data = self.data[:count], self.data[count:]
        self.start += count
        return piece.decode("utf-8", errors="replace")


class OutputStream:
    """Merges text and displays of one task; see the module's docstring."""

    def __init__(self, write: Write, show: Show, text: bool = True,
                 decode: Callable[[bytes], Any] = pickle.loads) -> None:
        self.write, self.show, self.decode = write, show, decode
        self.text = text  # False: displays only (the text went elsewhere)
        self.streams = {"out": _Text(), "err": _Text()}
        self.pending: list[dict[str, Any]] = []
        self.seen: set[int] = set()
        self.held: list[dict[str, Any]] = []  # figures shown at the cell's end: after its value
        self.last = {"out": 0, "err": 0}  # offsets of the last display received
        self.offsets = {"stdout": 0, "stderr": 0, "events": 0}  # what has been received
        self.incomplete = True  # until an update says the host has sent all there was
        # the last update was cut short (one reply's worth), the rest is on its way: a line
        # cut in two waits for its end, so that no status line lands in its middle
        self.cut = False

    def feed(self, update: Update) -> None:
        self.add(update.stdout, update.stdout_at, update.stderr, update.stderr_at,
                 update.events)
        self.offsets = {"stdout": self.streams["out"].end, "stderr": self.streams["err"].end,
                        "events": update.events_end or self.offsets["events"]}
        self.incomplete = update.final is False or update.events_more or update.output_more
        self.cut = bool(update.output_more)
        self.drain(more=update.events_more)

    def add(self, stdout: str, stdout_at: int, stderr: str, stderr_at: int,
            events: Iterable[dict[str, Any]]) -> None:
        self.streams["out"].add(stdout, stdout_at)
        self.streams["err"].add(stderr, stderr_at)
        for event in events:
            if event["n"] not in self.seen:
                self.seen.add(event["n"])
                self.pending.append(event)
                self.last = {"out": event["out"], "err": event["err"]}
        self.pending.sort(key=lambda e: e["n"])

    def drain(self, more: bool = False, entries: list[dict[str, Any]] | None = None) -> None:
        """Write what can be written now. With `entries` (all of the task's displays, at its
        end) everything is written, displays whose payload was too large to stream included."""
        while self.pending:
            event = self.pending[0]
            if event.get("deferred"):
                if entries is None:
                    break
                event = {**entries[event["n"]], "n": event["n"]}
            self._text_until(event)
            self.pending.pop(0)
            if event.get("at_end"):
                self.held.append(event)
            else:
                self.show(self._decoded(event))
        if self.pending:
            self._text_until(self.pending[0])
        elif more and entries is None:
            self._text_until(self.last)
        else:
            self._text_until(None, whole_lines=self.cut and entries is None)

    def finish(self, entries: list[dict[str, Any]]) -> None:
        """The task has ended: `entries` are all its displays, with their payloads."""
        for n, entry in enumerate(entries):
            if n not in self.seen:
                self.seen.add(n)
                self.pending.append({**entry, "n": n})
        self.pending.sort(key=lambda e: e["n"])
        self.drain(entries=entries)

    def show_held(self) -> None:
        held, self.held = self.held, []
        for event in held:
            self.show(self._decoded(event))

    def _text_until(self, event: dict[str, Any] | None, whole_lines: bool = False) -> None:
        for key, name in (("out", "stdout"), ("err", "stderr")):
            piece = self.streams[key].take(None if event is None else event[key], whole_lines)
            if piece and self.text:
                self.write(name, piece)

    def _decoded(self, event: dict[str, Any]) -> dict[str, Any]:
        """An entry ready to show: a pickled object unpickled (from base64 if it streamed)."""
        if event.get("kind") != "object":
            return event
        data = event["data"]
        if isinstance(data, str):
            data = base64.b64decode(data)
        try:
            return {**event, "object": self.decode(data)}
        except Exception as exc:  # noqa: BLE001 - show that it failed, keep the rest
            return {**event, "kind": "bundle", "data": {
                "text/plain": f"<a displayed object could not be loaded here: "
                              f"{type(exc).__name__}: {exc}>"}}
