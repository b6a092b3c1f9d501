"""The live view of a task in the notebook: an ipywidgets panel, or plain text lines.

A notebook UI (JupyterLab, Notebook 7, VS Code) gets one compact widget per task that updates
in place: state badge, host and job id, elapsed time, a progress bar with its message, the last
lines of output, and a Cancel button. Front ends that cannot render widgets (terminal IPython,
nbconvert, `jupyter execute`) get the same information as text lines, rate-limited so that a
long task does not flood the output. Updates may come from the monitor's thread; every view
rate-limits itself, so hundreds of running tasks do not flood the front end either.
"""

from __future__ import annotations

import html
import os
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable

from IPython import get_ipython
from IPython.display import display

from .monitor import Update
from .store import TaskRecord
from .taskdir import FINAL_STATES
from .views import STATE_COLOURS, format_duration, format_progress, status_table

WIDGET_INTERVAL = 0.25  # seconds between two redraws of a widget, unless the state changed
REDRAWS_PER_SECOND = 20  # for all live widgets together: many tasks redraw each less often
TEXT_INTERVAL = 10.0  # seconds between two progress lines in text mode
TAIL_LINES = 6


def widget_frontend() -> bool:
    """Whether the front end renders widgets. It cannot say so itself, so we infer it:
    `REMOTE_MAGIC_DISPLAY=widget|text` decides; else a kernel started by jupyter_server (it
    sets JPY_SESSION_NAME) or VS Code gets widgets, and anything else gets text."""
    choice = os.environ.get("REMOTE_MAGIC_DISPLAY", "").lower()
    if choice in ("widget", "text"):
        return choice == "widget"
    shell = get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return False
    return "JPY_SESSION_NAME" in os.environ or "VSCODE_PID" in os.environ


class _Tail:
    """The last lines of a task's output, fed chunk by chunk."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=TAIL_LINES)
        self.partial = ""

    def feed(self, text: str) -> None:
        text = (self.partial + text).replace("\r\n", "\n")
        *complete, self.partial = text.split("\n")
        for line in complete:
            self.lines.append(line.rsplit("\r", 1)[-1])  # a progress bar's last redraw

    def text(self) -> str:
        last = self.partial.rsplit("\r", 1)[-1]
        return "\n".join([*self.lines, last] if last else self.lines)


class TaskView:
    """What every view does with updates; subclasses draw."""

    def __init__(self, record: TaskRecord, on_cancel: Callable[[], Any] | None = None) -> None:
        self.record = record
        self.on_cancel = on_cancel
        self.state = record.state
        self.job_id = record.job_id
        self.reason: str | None = record.reason
        self.progress: dict[str, Any] | None = record.progress
        self.problem: str | None = None
        self.tail = _Tail()
        self.started = record.started
        self.loaded_note = ""
        self._lock = threading.Lock()
        self._drawn_at = 0.0

    def update(self, update: Update) -> None:
        """Take one monitor update (from any thread); redraw when due."""
        with self._lock:
            changed = update.state != self.state
            if changed or update.reason is not None:  # "waiting for a slot" is ours, not the host's
                self.reason = update.reason
            self.state, self.problem = update.state, update.problem
            self.job_id = update.job_id or self.job_id
            if update.progress is not None:
                self.progress = update.progress
            if update.stdout or update.stderr:
                self.tail.feed(update.stdout + update.stderr)
            if update.state == "running" and self.started is None:
                self.started = time.time()
            now = time.monotonic()
            if changed or update.final or now - self._drawn_at >= self.interval:
                self._drawn_at = now
                self.draw(changed)

    def loaded(self, names: list[str], collected: list[str]) -> None:
        """The results are in the namespace: say so, and how long it all took."""
        took = format_duration(time.time() - (self.record.submitted or self.record.created))
        parts = [f"loaded {', '.join(names)}" if names else "nothing to load"]
        if collected:
            parts.append(f"collected {len(collected)} file(s)")
        self.loaded_note = f"{'; '.join(parts)} · {took} end to end"
        with self._lock:
            self.draw(True)

    def detached(self) -> None:
        """The cell stopped waiting: the kernel is free, so Cancel can work now."""

    interval = WIDGET_INTERVAL

    def elapsed(self) -> str:
        if self.started is None:
            return ""
        return format_duration(time.time() - self.started)

    def summary(self) -> str:
        record = self.record
        label = f"{record.name} ({record.id})" if record.name else record.id
        job = f", job {self.job_id}" if self.job_id else ""
        parts = [p for p in (self.elapsed(), format_progress(self.progress), *self.notes()) if p]
        return f"task {label} on {record.host}{job}: {self.state}" + (
            " · " + " · ".join(parts) if parts else "")

    def notes(self) -> list[str]:
        """Why the task is where it is: its end, a wait for a slot, an unreachable host."""
        shown = self.state in FINAL_STATES or self.state == "prepared"
        return [n for n in (self.reason if shown else "",
                            f"host unreachable: {self.problem}" if self.problem else "",
                            self.loaded_note) if n]

    def show(self) -> None:
        raise NotImplementedError

    def draw(self, changed: bool) -> None:
        raise NotImplementedError


class WidgetView(TaskView):
    live: weakref.WeakSet[WidgetView] = weakref.WeakSet()  # views of unfinished tasks

    def __init__(self, record: TaskRecord, on_cancel: Callable[[], Any] | None = None,
                 waiting: bool = False) -> None:
        super().__init__(record, on_cancel)
        WidgetView.live.add(self)
        import ipywidgets as w

        self.header = w.HTML().add_class("rm-header")
        self.bar = w.FloatProgress(min=0.0, max=1.0, value=0.0,
                                   layout=w.Layout(width="60%", display="none"))
        self.bar.add_class("rm-progress")
        self.message = w.HTML(layout=w.Layout(display="none")).add_class("rm-message")
        self.output = w.HTML(layout=w.Layout(display="none")).add_class("rm-output")
        self.cancel = w.Button(description="Cancel", icon="stop", button_style="warning",
                               layout=w.Layout(width="auto"))
        self.cancel.add_class("rm-cancel")
        self.cancel.on_click(self._clicked)
        self._set_waiting(waiting)
        self.root = w.VBox([w.HBox([self.header, self.cancel]),
                            w.HBox([self.bar, self.message]), self.output])
        self.root.add_class("remote-magic-task")
        self.draw(True)

    @property
    def interval(self) -> float:  # type: ignore[override]
        """Redraws of all live views share one budget, so 200 tasks don't flood the page."""
        return max(WIDGET_INTERVAL, len(WidgetView.live) / REDRAWS_PER_SECOND)

    def _set_waiting(self, waiting: bool) -> None:
        # A waiting cell keeps the kernel busy: a click would only arrive once the task ended.
        # And it streams the whole output right below: the view need not repeat its tail.
        self.waiting = waiting
        self.cancel.disabled = waiting
        self.cancel.tooltip = ("Interrupt the kernel to detach from the task; Cancel then "
                               "works" if waiting else "Cancel the task on its host")

    def detached(self) -> None:
        self._set_waiting(False)
        self.draw(True)

    def _clicked(self, button: Any) -> None:
        button.disabled = True
        button.description = "Cancelling"
        if self.on_cancel is not None:
            self.on_cancel()

    def show(self) -> None:
        display(self.root)

    def draw(self, changed: bool) -> None:
        colour = STATE_COLOURS.get(self.state, "#777")
        record = self.record
        label = html.escape(record.name or record.id)
        bits = [f"on {html.escape(record.host)}"]
        if self.job_id:
            bits.append(f"job {html.escape(self.job_id)}")
        bits += [html.escape(extra) for extra in (self.elapsed(), *self.notes()) if extra]
        self.header.value = (
            f"<span class='rm-state rm-state-{self.state}' style='background:{colour};"
            f"color:white;padding:1px 6px;border-radius:3px;font-family:monospace'>"
            f"{self.state}</span> <b title='{record.id}'>{label}</b> " + " · ".join(bits))
        if self.progress:
            done = float(self.progress.get("done") or 0)
            total = float(self.progress.get("total") or 0) or max(done, 1.0)
            self.bar.max, self.bar.value = total, min(done, total)
            self.bar.layout.display = ""
            self.message.value = html.escape(format_progress(self.progress))
            self.message.layout.display = ""
        text = "" if self.waiting else self.tail.text()
        if text:
            self.output.value = (f"<pre style='margin:2px 0;font-size:90%;max-height:9em;"
                                 f"overflow:auto'>{html.escape(text)}</pre>")
            self.output.layout.display = ""
        if self.state in FINAL_STATES:
            self.cancel.layout.display = "none"
            WidgetView.live.discard(self)


class TextView(TaskView):
    """Lines of text: on each change of state, and progress at most every TEXT_INTERVAL.

    Time going by alone prints nothing: an hour-long quiet task is one line, not 360.
    """

    interval = TEXT_INTERVAL

    def __init__(self, record: TaskRecord, on_cancel: Callable[[], Any] | None = None,
                 waiting: bool = False) -> None:
        super().__init__(record, on_cancel)
        self.waiting = waiting
        self._last: tuple[Any, ...] = ()

    def show(self) -> None:
        self.draw(True)

    def detached(self) -> None:
        self.waiting = False  # printing from the monitor thread would land in other cells

    def draw(self, changed: bool) -> None:
        if not self.waiting:  # a background task's notice comes with the next cell
            return
        said = (self.state, self.job_id, format_progress(self.progress), *self.notes())
        if said != self._last:
            self._last = said
            print(self.summary(), flush=True)


def task_view(record: TaskRecord, on_cancel: Callable[[], Any] | None = None,
              waiting: bool = False) -> TaskView:
    """The right view for this front end; `waiting`: a cell blocks on the task."""
    cls = WidgetView if widget_frontend() else TextView
    view = cls(record, on_cancel, waiting)
    view.show()
    return view


def watch_status(records: list[TaskRecord], fetch: Callable[[], list[TaskRecord]],
                 interval: float = 1.0) -> None:
    """`%remote_status --watch`: a table that stays live until its tasks have all ended.

    In a notebook UI a background thread refreshes an HTML widget, so the kernel stays free;
    elsewhere the table is printed again when a task changes state, or its progress moved
    TEXT_INTERVAL after the last print, until the tasks end or Ctrl-C. Each refresh costs one
    request per host.
    """
    if widget_frontend():
        import ipywidgets as w

        table = w.HTML(status_table(records)["text/html"]).add_class("rm-status")
        display(table)

        def refresh() -> None:
            current = records
            while any(not r.final for r in current):
                time.sleep(interval)
                try:
                    current = fetch()
                except Exception as exc:  # noqa: BLE001 - shown in the table, then stop
                    table.value += f"<p>stopped watching: {html.escape(str(exc))}</p>"
                    return
                table.value = status_table(current)["text/html"]

        threading.Thread(target=refresh, daemon=True, name="remote-status-watch").start()
        return
    def said(records: list[TaskRecord]) -> tuple[list[str], list[tuple[str, ...]]]:
        return [r.state for r in records], [(r.job_id, format_progress(r.progress))
                                            for r in records]

    print(status_table(records)["text/plain"], flush=True)
    shown, printed_at = said(records), time.monotonic()
    try:
        while any(not r.final for r in records):
            time.sleep(interval)
            records = fetch()
            now = said(records)
            if now[0] != shown[0] or (now != shown
                                      and time.monotonic() - printed_at >= TEXT_INTERVAL):
                shown, printed_at = now, time.monotonic()
                text = status_table(records)["text/plain"]
                print(f"\n{time.strftime('%H:%M:%S')}\n{text}", flush=True)
    except KeyboardInterrupt:
        print("(stopped watching; the tasks run on)")
