"""The live view of a sweep (`%%remote --map`): one panel for all of its elements.

A sweep of 1,000 elements cannot get 1,000 task views: their widgets alone would slow the
front end, and their redraws would take the whole comm-message budget. It gets ONE view of a
fixed handful of widgets whatever its size: a header (counts per state, elapsed time), a bar
of elements done, a grid with one small coloured cell per element (its tooltip says which
element, its value, its state and for how long), the last output lines of one running
element, and a Cancel button for the whole sweep.

Updates come from the host sessions' threads, many a second; taking one is O(1) (a few list
writes under a lock) and draws nothing. The latest state of every element is always kept, so
a redraw that is put off loses nothing: the next one shows it. A widget view redraws from a
thread of its own, at most every SWEEP_INTERVAL, out of the message budget all widget views
share (`WidgetView.budget`). A text view prints a line when the counts change, at most every
TEXT_INTERVAL, and always one when the last element ends.
"""

from __future__ import annotations

import html
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from IPython.display import display

from ..client.session import Update
from ..wire.states import FINAL_STATES, STATES, State
from .views import STATE_COLOURS, format_duration
from .widgets import MESSAGES_PER_SECOND, TEXT_INTERVAL, OutputTail, WidgetView, widget_frontend

SWEEP_INTERVAL = 0.3  # seconds between two redraws of a sweep's widgets, at the most
CLOCK_INTERVAL = 1.0  # with nothing else new, the elapsed time is redrawn this often
GRID_INTERVAL = 1.0  # the grid (the one big message) goes at most this often, counts more
GRID_TICK = 5.0  # running cells' durations (tooltips) alone resend the grid this often
MAX_CELLS = 1000  # more elements than this share cells, so that the grid's size is bounded
LABEL_CHARS = 40  # of a value's label in a tooltip and above the output, escaped
# Which state a cell shared by several elements shows: the one that most needs an eye.
URGENCY = (State.FAILED, State.TIMED_OUT, State.LOST, State.RUNNING, State.QUEUED,
           State.SUBMITTED, State.PREPARED, State.CANCELLED, State.COMPLETED)
_BADGE = ("<span class='rm-count rm-count-{state}' style='background:{colour};color:white;"
          "padding:1px 6px;border-radius:3px;font-family:monospace;margin-left:4px;"
          "white-space:nowrap'>"
          "{count} {state}</span>")


def _grid_style() -> str:
    """One stylesheet for every cell: per-cell inline styles would triple the grid's size.
    Elements that have not started yet are outlined, so they do not look cancelled."""
    cell = ".rm-sweep-cells i"
    rules = [f".rm-sweep-cells{{line-height:0;max-height:14em;overflow-y:auto;padding:3px 0}}"
             f"{cell}{{display:inline-block;width:9px;height:9px;margin:0 1px 1px 0;"
             f"border-radius:2px;background:#777}}"]
    for state, colour in STATE_COLOURS.items():
        if state in (State.PREPARED, State.SUBMITTED):
            rules.append(f"{cell}.s-{state}{{background:none;box-shadow:inset 0 0 0 1px "
                         f"{colour}}}")
        else:
            rules.append(f"{cell}.s-{state}{{background:{colour}}}")
    return "<style>" + "".join(rules) + "</style>"


GRID_STYLE = _grid_style()


@dataclass
class Snapshot:
    """A sweep's state at one moment, copied under the lock and drawn outside it."""

    states: list[str]
    ran_at: list[float | None]
    ended_at: list[float | None]
    counts: dict[str, int]
    done: int
    elapsed: float
    version: int  # bumps with each change of an element's state
    problem: str | None
    featured: tuple[int, str, str] | None  # (index, state, output tail) shown below the grid
    lines: list[str]
    now: float


def count_order(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Non-zero counts in the order of a task's life; a state this code does not know last."""
    known = [(s, counts[s]) for s in STATES if counts.get(s)]
    return known + sorted((s, n) for s, n in counts.items() if n and s not in STATES)


def duration(ran_at: float | None, ended_at: float | None, now: float) -> float | None:
    """How long an element has run (or ran): none before it was seen running."""
    if ran_at is None:
        return None
    return max(0.0, (ended_at if ended_at is not None else now) - ran_at)


def short_label(label: str) -> str:
    """A value's label as HTML of at most about LABEL_CHARS characters: the tooltips of
    1,000 cells repeat it, and a long value (a dict of parameters) would swell the grid."""
    escaped = html.escape(label)
    if len(escaped) <= LABEL_CHARS:
        return escaped
    text = label[:LABEL_CHARS - 1]
    while len(html.escape(text)) > LABEL_CHARS - 1:  # quotes and brackets escape long
        text = text[:-1]
    return html.escape(text) + "…"


def grid_html(heads: list[str], snap: Snapshot) -> str:
    """The cells of all elements, one `<i>` each with its tooltip (`heads[i]`: "#i label",
    as HTML); above MAX_CELLS elements several share a cell, so that the HTML stays within
    a bound whatever the sweep's size."""
    n = len(heads)
    per = max(1, math.ceil(n / MAX_CELLS))
    states, ran_at, ended_at, now = snap.states, snap.ran_at, snap.ended_at, snap.now
    cells = []
    if per == 1:
        for i, head in enumerate(heads):
            state = states[i]
            took = duration(ran_at[i], ended_at[i], now)
            tip = f", {format_duration(took)}" if took is not None else ""
            cells.append(f'<i class=s-{state} title="{head}: {html.escape(state)}{tip}"></i>')
    else:
        rank = {s: k for k, s in enumerate(URGENCY)}
        for first in range(0, n, per):
            group: dict[str, int] = {}
            for state in states[first:first + per]:
                group[state] = group.get(state, 0) + 1
            shown = min(group, key=lambda s: rank.get(s, len(rank)))
            last = min(first + per, n) - 1
            tip = f"#{first}-#{last}: " + ", ".join(f"{c} {s}" for s, c in count_order(group))
            cells.append(f'<i class=s-{shown} title="{html.escape(tip)}"></i>')
    return f"{GRID_STYLE}<div class=rm-sweep-cells>{''.join(cells)}</div>"


class SweepView:
    """What every sweep view does with updates; subclasses draw.

    `labels[i]` is how element i's value is shown ("seed=3"). Every element starts as
    prepared (its files are written) until its first update. `waiting`: a cell blocks on
    the sweep, as for `task_view`: a widget's Cancel click would only reach the kernel after
    the sweep, so it waits for `detached()`; text is printed only while a cell waits (from
    a session thread it would land in whichever cell runs then).
    """

    def __init__(self, sweep_id: str, host: str, labels: list[str],
                 on_cancel: Callable[[], Any] | None = None, *, waiting: bool = True) -> None:
        self.sweep_id, self.host = sweep_id, host
        self.labels = [str(label) for label in labels]
        self.on_cancel = on_cancel
        self.waiting = waiting
        n = len(self.labels)
        self._states: list[str] = [State.PREPARED.value] * n
        self._ran_at: list[float | None] = [None] * n
        self._ended_at: list[float | None] = [None] * n
        self._counts: dict[str, int] = {State.PREPARED.value: n} if n else {}
        self._done = 0
        # running elements with output, the one whose output came last at the end
        self._tails: OrderedDict[int, OutputTail] = OrderedDict()
        self._version = 0
        self._problem: str | None = None
        self._lines: list[str] = []
        self._cancelled = False
        self.created = time.time()
        self._ended: float | None = None  # when the last element ended, or the sweep did
        self._lock = threading.Lock()

    # ------------------------------------------------------------ updates

    def update(self, index: int, update: Update) -> None:
        """Element `index` has news (from any thread). O(1): the news is recorded for the next
        redraw. An ended element stays ended: a late poll's update cannot bring it back."""
        state = str(update.state)
        with self._lock:
            old = self._states[index]
            news = update.problem != self._problem  # the host, not the element: header only
            self._problem = update.problem
            if old in FINAL_STATES:
                if news:
                    self._news(False)
                return
            now = time.time()
            # the host's own times when the update carries them, else when we first saw it
            started = getattr(update, "started", None)
            if started is not None:
                self._ran_at[index] = started
            elif state == State.RUNNING and self._ran_at[index] is None:
                self._ran_at[index] = now
            changed = state != old
            if changed:
                self._states[index] = state
                left = self._counts[old] - 1
                if left:
                    self._counts[old] = left
                else:
                    del self._counts[old]
                self._counts[state] = self._counts.get(state, 0) + 1
                self._version += 1
            if state in FINAL_STATES:
                self._ended_at[index] = getattr(update, "finished", None) or now
                self._tails.pop(index, None)  # its last lines go with the results
                self._done += 1
                if self._done == len(self._states):
                    self._ended = now
            elif update.stdout or update.stderr:
                tail = self._tails.pop(index, None) or OutputTail()
                tail.feed(update.stdout + update.stderr)
                self._tails[index] = tail  # now the last: the one shown
            self._news(changed)

    def _news(self, counts_changed: bool) -> None:
        """Something changed (called with the lock held): subclasses decide when to draw."""

    def counts(self) -> dict[str, int]:
        """Elements per state, only the non-zero ones, in the order of a task's life."""
        with self._lock:
            return dict(count_order(self._counts))

    def finished(self, lines: list[str]) -> None:
        """The sweep ended and its results are loaded: a last redraw, with `lines` (a summary
        such as "98 completed, 2 failed") below the counts."""
        with self._lock:
            self._lines = list(lines)
            self._ended = self._ended or time.time()
            self._version += 1
        self._final_draw()

    def detached(self) -> None:
        """The cell stopped waiting on the sweep: the kernel is free, so Cancel works."""
        self.waiting = False

    def show(self) -> None:
        raise NotImplementedError

    def _final_draw(self) -> None:
        raise NotImplementedError

    def _cancel_once(self) -> bool:
        """Whether this is the first request to cancel (clicks can come twice)."""
        with self._lock:
            first, self._cancelled = not self._cancelled, True
        if first and self.on_cancel is not None:
            self.on_cancel()
        return first

    # ------------------------------------------------------------ what to show

    def snapshot(self) -> Snapshot:
        """Everything a redraw needs, copied under the lock (tens of microseconds for 1,000
        elements) so that drawing does not hold up the session threads."""
        with self._lock:
            return self._snapshot(elements=True)

    def _snapshot(self, elements: bool) -> Snapshot:
        """(Lock held.) `elements`: with each element's state and times, which the grid
        needs and a line of counts does not."""
        featured = None
        if self._tails:
            index = next(reversed(self._tails))
            featured = (index, self._states[index], self._tails[index].text())
        now = time.time()
        return Snapshot(
            list(self._states) if elements else [],
            list(self._ran_at) if elements else [],
            list(self._ended_at) if elements else [],
            dict(self._counts), self._done, (self._ended or now) - self.created,
            self._version, self._problem, featured, list(self._lines), now)

    def counts_text(self, snap: Snapshot) -> str:
        """The counts in words: "37/100 done (35 completed, 2 failed) · 60 running"."""
        order = count_order(snap.counts)
        ended = [f"{c} {s}" for s, c in order if s in FINAL_STATES]
        parts = [f"{snap.done}/{len(self.labels)} done"
                 + (f" ({', '.join(ended)})" if ended else "")]
        parts += [f"{c} {s}" for s, c in order if s not in FINAL_STATES]
        return " · ".join(parts)

    def summary(self, snap: Snapshot) -> str:
        text = (f"sweep {self.sweep_id} on {self.host}: {self.counts_text(snap)} · "
                f"{format_duration(snap.elapsed)}")
        if snap.problem:
            text += f" · host unreachable: {snap.problem}"
        return text


class WidgetSweepView(SweepView):
    """A fixed handful of widgets, redrawn by a thread of the view's own.

    The thread sleeps until there is news, then draws at most every SWEEP_INTERVAL, so a
    thousand updates a second cost a few redraws, not a thousand. A redraw sends only the
    widgets whose value changed (one message each): the clock ticking moves the header
    alone, a few hundred bytes; the grid, tens of kB at 1,000 elements, goes when an
    element's state changed, at most every GRID_INTERVAL (the counts and the bar say it
    sooner), or every GRID_TICK for running elements' durations. A redraw in which the
    counts changed goes at once, like a task view's new state; the others wait for the
    shared budget.
    """

    def __init__(self, sweep_id: str, host: str, labels: list[str],
                 on_cancel: Callable[[], Any] | None = None, *, waiting: bool = True) -> None:
        super().__init__(sweep_id, host, labels, on_cancel, waiting=waiting)
        import ipywidgets as w

        self._wake = threading.Condition(self._lock)
        self._dirty = False
        self._closed = False  # finished: the thread stops
        self._thread: threading.Thread | None = None
        self._draw_lock = threading.Lock()
        self._drawn_at = 0.0  # monotonic
        self._drawn_counts: dict[str, int] | None = None
        self._grid_version = -1  # the snapshot version the grid shows
        self._grid_at = 0.0
        self._heads = [f"#{i} {short_label(label)}" for i, label in enumerate(self.labels)]

        self.header = w.HTML(layout=w.Layout(flex="1 1 auto")).add_class("rm-sweep-header")
        self.bar = w.IntProgress(min=0, max=max(1, len(self.labels)), value=0,
                                 layout=w.Layout(width="60%"))
        self.bar.add_class("rm-sweep-progress")
        self.grid = w.HTML(layout=w.Layout(width="100%")).add_class("rm-sweep-grid")
        self.output = w.HTML(layout=w.Layout(display="none")).add_class("rm-sweep-output")
        self.cancel = w.Button(description="Cancel", icon="stop", button_style="warning",
                               layout=w.Layout(width="auto", flex="0 0 auto"))
        self.cancel.add_class("rm-sweep-cancel")
        self.cancel.on_click(self._clicked)
        self._set_waiting(waiting)
        self.root = w.VBox([w.HBox([self.header, self.cancel]), self.bar, self.grid,
                            self.output])
        self.root.add_class("remote-magic-sweep")
        self.draw(True)

    # ------------------------------------------------------------ the thread

    def show(self) -> None:
        display(self.root)
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"remote-sweep-{self.sweep_id}")
                self._thread.start()

    def _news(self, counts_changed: bool) -> None:
        if not self._dirty:
            self._dirty = True
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._dirty:
                    due = self._due()
                    if due is None:  # all drawn, the clock stopped: only finished() is left
                        self._wake.wait()
                        continue
                    left = due - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
                if self._closed:
                    return
                pause = self._drawn_at + SWEEP_INTERVAL - time.monotonic()
                if pause > 0:  # more news may come meanwhile: one redraw shows it all
                    self._wake.wait(pause)
                    if self._closed:
                        return
                self._dirty = False
            try:
                drawn = self.draw(None)
            except Exception:  # noqa: BLE001 - a closed comm: nothing to draw on any more
                return
            if not drawn:  # the budget is spent: try again when it has a message again
                with self._lock:
                    self._dirty = True
                time.sleep(1 / MESSAGES_PER_SECOND)

    def _due(self) -> float | None:
        """When a redraw is due with no news (lock held): the clock's next tick while the
        sweep runs, and a grid put off by GRID_INTERVAL."""
        due = []
        if self._ended is None:
            due.append(self._drawn_at + CLOCK_INTERVAL)
        if self._version != self._grid_version:
            due.append(self._grid_at + GRID_INTERVAL)
        return min(due) if due else None

    # ------------------------------------------------------------ drawing

    def render(self, snap: Snapshot, grid: bool) -> list[tuple[Any, dict[str, Any]]]:
        """What each widget should show now: (widget, {trait: value}) pairs; the grid only if
        `grid` (it is the big one)."""
        badges = "".join(_BADGE.format(state=html.escape(s), count=c,
                                       colour=STATE_COLOURS.get(s, "#777"))
                         for s, c in count_order(snap.counts))
        bits = [f"<span style='white-space:nowrap'>{bit}</span>" for bit in (
            f"on {html.escape(self.host)}", f"{snap.done}/{len(self.labels)} done",
            format_duration(snap.elapsed))]
        if snap.problem:
            bits.append(f"host unreachable: {html.escape(snap.problem)}")
        header = (f"<b>sweep {html.escape(self.sweep_id)}</b> " + " · ".join(bits) + badges
                  + "".join(f"<div>{html.escape(line)}</div>" for line in snap.lines))
        wanted: list[tuple[Any, dict[str, Any]]] = [(self.header, {"value": header})]
        ended = snap.done == len(self.labels)
        failed = any(snap.counts.get(s) for s in (State.FAILED, State.TIMED_OUT, State.LOST))
        style = "" if not ended else "danger" if failed else (
            "success" if snap.counts.get(State.COMPLETED) == snap.done else "warning")
        wanted.append((self.bar, {"value": snap.done, "bar_style": style}))
        if grid:
            wanted.append((self.grid, {"value": grid_html(self._heads, snap)}))
        if snap.featured is not None:
            index, state, text = snap.featured
            wanted += [(self.output, {"value": (
                f"<div style='font-size:90%;color:#555'>last output of {self._heads[index]} "
                f"({html.escape(state)})</div><pre style='margin:2px 0;font-size:90%;"
                f"max-height:7em;overflow:auto'>{html.escape(text)}</pre>")}),
                (self.output.layout, {"display": ""})]
        elif self.output.value:
            wanted += [(self.output, {"value": ""}), (self.output.layout, {"display": "none"})]
        return wanted

    def draw(self, force: bool | None) -> bool:
        """Send what changed, one comm message per widget (hold_sync batches its traits), if
        the shared budget allows. `force`: all of it must go now; None (the view's thread):
        it must if the counts moved, and the grid goes at most every GRID_INTERVAL.
        Returns whether it was drawn."""
        with self._draw_lock:
            at = time.monotonic()
            snap = self.snapshot()
            grid = force is True or at - self._grid_at >= GRID_INTERVAL and (
                snap.version != self._grid_version
                or (bool(snap.counts.get(State.RUNNING)) and at - self._grid_at >= GRID_TICK))
            if force is None:
                force = snap.counts != self._drawn_counts
            changes = []
            for widget, traits in self.render(snap, grid):
                differ = {k: v for k, v in traits.items() if getattr(widget, k) != v}
                if differ:
                    changes.append((widget, differ))
            if changes and not WidgetView.budget.take(len(changes), force):
                return False
            for widget, differ in changes:
                with widget.hold_sync():
                    for name, value in differ.items():
                        setattr(widget, name, value)
            self._drawn_at, self._drawn_counts = at, snap.counts
            if grid:
                self._grid_version, self._grid_at = snap.version, at
            return True

    def _final_draw(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()
        self.draw(True)
        with self.cancel.hold_sync():
            self.cancel.disabled = True
            self.cancel.tooltip = "The sweep has ended"

    # ------------------------------------------------------------ Cancel

    def _set_waiting(self, waiting: bool) -> None:
        self.waiting = waiting
        with self.cancel.hold_sync():
            self.cancel.disabled = waiting or self._cancelled
            self.cancel.tooltip = ("Interrupt the kernel to detach from the sweep; Cancel then "
                                   "works" if waiting else "Cancel every element of the sweep")

    def detached(self) -> None:
        with self._lock:
            closed = self._closed
        if not closed:
            self._set_waiting(False)

    def _clicked(self, button: Any) -> None:
        with button.hold_sync():
            button.disabled = True
            button.description = "Cancelling"
        self._cancel_once()


class TextSweepView(SweepView):
    """A line when the counts change, at most every TEXT_INTERVAL; never one per element's
    update (1,000 elements would print thousands), and always one when the last element ends
    (or the sweep does)."""

    interval = TEXT_INTERVAL

    def __init__(self, sweep_id: str, host: str, labels: list[str],
                 on_cancel: Callable[[], Any] | None = None, *, waiting: bool = True) -> None:
        super().__init__(sweep_id, host, labels, on_cancel, waiting=waiting)
        self._said: dict[str, int] | None = None
        self._said_at = 0.0

    def show(self) -> None:
        with self._lock:
            self._say()

    def _news(self, counts_changed: bool) -> None:
        if counts_changed and (self._ended is not None
                               or time.monotonic() - self._said_at >= self.interval):
            self._say()

    def _say(self) -> None:
        """Print the counts if they are not the ones printed last (lock held). Not flushed,
        as TextView: the kernel sends its output within 0.2 s anyway."""
        if not self.waiting or self._counts == self._said:
            return
        self._said, self._said_at = dict(self._counts), time.monotonic()
        print(self.summary(self._snapshot(elements=False)))

    def _final_draw(self) -> None:
        with self._lock:
            self._say()
            if self.waiting:
                for line in self._lines:
                    print(line)


def sweep_view(sweep_id: str, host: str, labels: list[str],
               on_cancel: Callable[[], Any] | None = None, *,
               waiting: bool = True) -> SweepView:
    """The live view of a sweep, shown: widgets where the front end renders them (see
    `widget_frontend`), else text lines."""
    cls = WidgetSweepView if widget_frontend() else TextSweepView
    view = cls(sweep_id, host, labels, on_cancel, waiting=waiting)
    view.show()
    return view
