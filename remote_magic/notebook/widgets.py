"""The live view of a task in the notebook: an ipywidgets panel, or plain text lines.

A notebook UI (JupyterLab, Notebook 7, VS Code) gets one compact widget per task that updates
in place: state badge, host and job id, elapsed time, a progress bar with its message, the last
lines of output, and a Cancel button. Front ends that cannot render widgets (terminal IPython,
nbconvert, `jupyter execute`) get the same information as text lines, rate-limited so that a
long task does not flood the output. Updates may come from the session's thread; every view
rate-limits itself, and all widget views share one budget of comm messages, so hundreds of
running tasks do not flood the front end either.
"""

from __future__ import annotations

import html
import os
import threading
import time
from collections import deque
from typing import Any, Callable

from IPython import get_ipython
from IPython.display import display

from ..client.session import Update
from ..client.store import TaskRecord
from ..wire.states import FINAL_STATES, State
from .views import STATE_COLOURS, format_duration, format_progress, status_table

WIDGET_INTERVAL = 0.25  # seconds between two redraws of a widget, unless the state changed
MESSAGES_PER_SECOND = 60  # comm messages all live widgets may send for routine redraws
MESSAGE_BURST = 20  # how many of those may go at once after a quiet spell
TEXT_INTERVAL = 10.0  # seconds between two progress lines in text mode
TAIL_LINES = 6


DISPLAY = "auto"  # RemoteMagics.display (IPython configuration): widget, text, or auto


def widget_frontend() -> bool:
    """Whether the front end renders widgets. It cannot say so itself, so we infer it: the
    RemoteMagics.display setting or else `REMOTE_MAGIC_DISPLAY=widget|text` decides; else a
    kernel started by jupyter_server (it sets JPY_SESSION_NAME) or VS Code gets widgets, and
    anything else gets text."""
    choice = DISPLAY if DISPLAY != "auto" else \
        os.environ.get("REMOTE_MAGIC_DISPLAY", "").lower()
    if choice in ("widget", "text"):
        return choice == "widget"
    shell = get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return False
    return "JPY_SESSION_NAME" in os.environ or "VSCODE_PID" in os.environ


class OutputTail:
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


class _MessageBudget:
    """A token bucket of comm messages shared by every widget view.

    Redraws that must not wait (a new state, the end, results loaded) go at once and may run
    the bucket into debt, at most one second's worth, which the routine redraws after them
    pay back. Routine redraws (time going by, progress, output) wait for tokens.
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self, cost: int, force: bool) -> bool:
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
            self._at = now
            if min(cost, self.burst) > self.tokens and not force:
                return False
            self.tokens = max(-self.rate, self.tokens - cost)
            return True


class _Pacer:
    """Routine redraws of all widget views, one after another in the order they came due, as
    fast as the message budget allows.

    The session hands all of a host's tasks their updates in one go, so 200 views come due
    at the same moment: drawn there and then, they would send a burst, and left to wait for
    their next update, the first views in the session's order would take the whole budget.
    Queued here, each waits its turn: with N views each is redrawn every N x (messages per
    redraw) / MESSAGES_PER_SECOND seconds, and one view alone every WIDGET_INTERVAL.
    """

    def __init__(self) -> None:
        self._queue: deque[WidgetView] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, view: WidgetView) -> None:
        with self._cond:
            self._queue.append(view)
            self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="remote-magic-redraws")
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                view = self._queue[0]
            try:
                drawn = view.paced()
            except Exception:  # noqa: BLE001 - a broken view (closed comm) must not stop others
                view._queued, drawn = False, True
            if drawn:
                with self._cond:
                    self._queue.popleft()
            else:
                time.sleep(1 / MESSAGES_PER_SECOND)


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
        self.tail = OutputTail()
        self.started = record.started
        self.loaded_note = ""
        self._lock = threading.Lock()
        self._drawn_at = 0.0

    def update(self, update: Update) -> None:
        """Take one session update (from any thread); redraw when due."""
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
            if update.state == State.RUNNING and self.started is None:
                self.started = time.time()
            now = time.monotonic()
            if changed or update.final:
                self.draw(True)
                self._drawn_at = now
            elif now - self._drawn_at >= self.interval:
                self.due()

    def due(self) -> None:
        """Time for a routine redraw (called with the lock held)."""
        self.draw(False)
        self._drawn_at = time.monotonic()

    def loaded(self, names: list[str], notes: list[str]) -> None:
        """The results are in the namespace: say so, what else the user should know, and how
        long it all took."""
        took = format_duration(time.time() - (self.record.submitted or self.record.created))
        parts = [f"loaded {', '.join(names)}" if names else "nothing to load", *notes]
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
        shown = self.state in FINAL_STATES or self.state == State.PREPARED
        return [n for n in (self.reason if shown else "",
                            f"host unreachable: {self.problem}" if self.problem else "",
                            self.loaded_note) if n]

    def show(self) -> None:
        raise NotImplementedError

    def draw(self, changed: bool) -> bool:
        """Show the current state; `changed`: it must be shown now. Returns whether it was
        (a routine redraw may be put off to a later update)."""
        raise NotImplementedError


class WidgetView(TaskView):
    budget = _MessageBudget(MESSAGES_PER_SECOND, MESSAGE_BURST)
    pacer = _Pacer()

    def __init__(self, record: TaskRecord, on_cancel: Callable[[], Any] | None = None,
                 waiting: bool = False) -> None:
        super().__init__(record, on_cancel)
        self._queued = False  # waits in the pacer's queue
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

    def due(self) -> None:
        if not self._queued:
            self._queued = True
            WidgetView.pacer.add(self)

    def paced(self) -> bool:
        """The pacer's turn for this view: False while the budget has too few messages."""
        with self._lock:
            if not self.draw(False):
                return False
            self._queued = False
            self._drawn_at = time.monotonic()
            return True

    def _set_waiting(self, waiting: bool) -> None:
        # A waiting cell keeps the kernel busy: a click would only arrive once the task ended.
        self.waiting = waiting
        with self.cancel.hold_sync():
            self.cancel.disabled = waiting
            self.cancel.tooltip = ("Interrupt the kernel to detach from the task; Cancel then "
                                   "works" if waiting else "Cancel the task on its host")

    def detached(self) -> None:
        with self._lock:
            self._set_waiting(False)
            self.draw(True)

    def _clicked(self, button: Any) -> None:
        with button.hold_sync():
            button.disabled = True
            button.description = "Cancelling"
        if self.on_cancel is not None:
            self.on_cancel()

    def show(self) -> None:
        display(self.root)

    def render(self) -> list[tuple[Any, dict[str, Any]]]:
        """What each widget of the view should show now: (widget, {trait: value}) pairs."""
        colour = STATE_COLOURS.get(self.state, "#777")
        record = self.record
        label = html.escape(record.name or record.id)
        bits = [f"on {html.escape(record.host)}"]
        if self.job_id:
            bits.append(f"job {html.escape(self.job_id)}")
        bits += [html.escape(extra) for extra in (self.elapsed(), *self.notes()) if extra]
        header = (
            f"<span class='rm-state rm-state-{self.state}' style='background:{colour};"
            f"color:white;padding:1px 6px;border-radius:3px;font-family:monospace'>"
            f"{self.state}</span> <b title='{record.id}'>{label}</b> " + " · ".join(bits))
        wanted: list[tuple[Any, dict[str, Any]]] = [(self.header, {"value": header})]
        if self.progress:
            done = float(self.progress.get("done") or 0)
            total = float(self.progress.get("total") or 0) or max(done, 1.0)
            wanted += [(self.bar, {"max": total, "value": min(done, total)}),
                       (self.bar.layout, {"display": ""}),
                       (self.message, {"value": html.escape(format_progress(self.progress))}),
                       (self.message.layout, {"display": ""})]
        final = self.state in FINAL_STATES
        # A waiting cell streams the whole output right below the view: once the task has
        # ended that copy is complete, and the view's tail would only repeat its last lines.
        text = "" if self.waiting and final else self.tail.text()
        if text:
            wanted += [(self.output, {"value": f"<pre style='margin:2px 0;font-size:90%;"
                                               f"max-height:9em;overflow:auto'>"
                                               f"{html.escape(text)}</pre>"}),
                       (self.output.layout, {"display": ""})]
        elif self.output.value:
            wanted += [(self.output, {"value": ""}), (self.output.layout, {"display": "none"})]
        if final:
            wanted.append((self.cancel.layout, {"display": "none"}))
        return wanted

    def draw(self, changed: bool) -> bool:
        """Send what changed, one comm message per widget whose traits changed (hold_sync
        batches them), if the shared budget allows; the end of the task always goes."""
        changes = []
        for widget, traits in self.render():
            differ = {k: v for k, v in traits.items() if getattr(widget, k) != v}
            if differ:
                changes.append((widget, differ))
        if changes and not WidgetView.budget.take(len(changes), changed):
            return False
        for widget, differ in changes:
            with widget.hold_sync():
                for name, value in differ.items():
                    setattr(widget, name, value)
        return True


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
        self.waiting = False  # printing from the session thread would land in other cells

    def draw(self, changed: bool) -> bool:
        if not self.waiting:  # a background task's notice comes with the next cell
            return True
        said = (self.state, self.job_id, format_progress(self.progress), *self.notes())
        if said != self._last:
            self._last = said
            # Not flushed: the kernel sends its output within 0.2 s anyway, and before any
            # display; waiting for each line to be sent cost a short cell a millisecond.
            print(self.summary())
        return True


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
