"""The live view of a sweep: counts, grid and tooltips, what 1,000 elements cost, Cancel,
text lines. Widgets are checked through the messages they send (each widget's `_send`), and
once through a real kernel's comm messages."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from helpers.kernel import start_kernel

from remote_magic.client.session import Update
from remote_magic.notebook import sweep_view as sv
from remote_magic.notebook.sweep_view import (
    GRID_INTERVAL,
    MAX_CELLS,
    SWEEP_INTERVAL,
    TextSweepView,
    WidgetSweepView,
    sweep_view,
)
from remote_magic.notebook.widgets import WidgetView


class Cells(HTMLParser):
    """The grid's cells: (class, tooltip) of each `<i>`."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.cells: list[tuple[str, str]] = []
        self.feed(markup)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "i":
            found = dict(attrs)
            self.cells.append((found.get("class") or "", found.get("title") or ""))


def states_of(view: WidgetSweepView) -> list[str]:
    return [cls.removeprefix("s-") for cls, _ in Cells(view.grid.value).cells]


def up(state: str, out: str = "", **extra: Any) -> Update:
    update = Update("t", state, stdout=out)
    for name, value in extra.items():  # what a later Update may carry (the host's times)
        setattr(update, name, value)
    return update


class Sent:
    """Every comm message the view's widgets send: (monotonic time, widget, JSON size)."""

    def __init__(self, view: WidgetSweepView) -> None:
        self.messages: list[tuple[float, Any, int]] = []
        for widget in (view.header, view.bar, view.grid, view.output, view.output.layout,
                       view.cancel):
            self._spy(widget)

    def _spy(self, widget: Any) -> None:
        original = widget._send

        def send(msg: dict[str, Any], buffers: Any = None) -> None:
            self.messages.append((time.monotonic(), widget, len(json.dumps(msg))))
            original(msg, buffers)

        widget._send = send

    def busiest_second(self) -> int:
        times, most, first = sorted(t for t, _, _ in self.messages), 0, 0
        for last, t in enumerate(times):
            while t - times[first] >= 1.0:
                first += 1
            most = max(most, last - first + 1)
        return most


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[WidgetSweepView]]:
    """Widget views whose show() starts their drawing thread without a front end; each is
    finished at the end, so that its thread stops."""
    monkeypatch.setattr(sv, "display", lambda *a, **k: None)
    views: list[WidgetSweepView] = []
    yield views
    for view in views:
        view.finished([])


def test_counts_and_grid_follow_updates_in_any_order() -> None:
    labels = [f"seed={i}" for i in range(5)]
    view = WidgetSweepView("1a2b3c4d", "hpc", labels, waiting=False)
    assert view.counts() == {"prepared": 5}
    view.update(3, up("running"))  # out of order: the last element first
    view.update(0, up("queued"))
    view.update(0, up("queued"))  # repeated: counted once
    view.update(4, up("completed"))
    view.update(4, up("running"))  # a late poll cannot bring an ended element back
    view.update(1, up("running"))
    view.update(1, up("queued"))  # requeued by its scheduler: the latest state wins
    view.update(2, up("failed"))
    view.update(2, up("completed"))  # an end is an end
    assert view.counts() == {"queued": 2, "running": 1, "completed": 1, "failed": 1}
    assert list(view.counts()) == ["queued", "running", "completed", "failed"]  # life's order
    view.draw(True)
    assert states_of(view) == ["queued", "queued", "failed", "running", "completed"]
    assert "2/5 done" in view.header.value
    for state in ("queued", "running", "completed", "failed"):
        assert f"rm-count-{state}" in view.header.value
    assert "rm-count-prepared" not in view.header.value
    assert view.bar.value == 2 and view.bar.max == 5


def test_updates_from_several_threads_at_once_lose_nothing() -> None:
    n = 1000
    view = WidgetSweepView("cafe", "hpc", [f"seed={i}" for i in range(n)], waiting=False)
    ends = {i: random.choice(["completed", "completed", "failed", "timed_out"])
            for i in range(n)}

    def feed(indices: list[int]) -> None:
        for i in indices:
            for state in ("queued", "queued", "running", "running", ends[i], ends[i]):
                view.update(i, up(state, out=f"out {i}\n" if state == "running" else ""))

    order = list(range(n))
    random.shuffle(order)
    threads = [threading.Thread(target=feed, args=(order[k::8],)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wanted = {s: list(ends.values()).count(s) for s in ("completed", "failed", "timed_out")}
    assert view.counts() == {s: c for s, c in wanted.items() if c}
    view.draw(True)
    assert states_of(view) == [ends[i] for i in range(n)]
    assert view.bar.value == n
    assert view.output.value == ""  # no element runs: no output shown


def test_each_cell_has_a_tooltip_with_index_label_state_and_duration() -> None:
    labels = ["seed=0", "x='<b>'", "lr=0.1", "seed=3"]
    view = WidgetSweepView("beef", "hpc", labels, waiting=False)
    view.update(0, up("running"))
    view.update(1, up("completed", started=time.time() - 65, finished=time.time()))
    view.update(2, up("queued"))
    view.draw(True)
    cells = Cells(view.grid.value).cells
    assert len(cells) == 4
    assert cells[0][0] == "s-running" and cells[0][1].startswith("#0 seed=0: running, ")
    assert cells[0][1].endswith(" s")  # time since it was first seen running
    assert cells[1] == ("s-completed", "#1 x='<b>': completed, 1:05")  # the host's times
    assert "<b>" not in view.grid.value  # labels are escaped
    assert cells[2] == ("s-queued", "#2 lr=0.1: queued")
    assert cells[3] == ("s-prepared", "#3 seed=3: prepared")


def test_a_thousand_elements_draw_small_and_fast() -> None:
    n = 1000
    view = WidgetSweepView("1a2b3c4d", "hpc", [f"seed={i}" for i in range(n)], waiting=False)
    for i in range(n):
        view.update(i, up("running", out=f"starting {i}\n"))
    start = time.perf_counter()
    for i in range(n):
        view.update(i, up(random.choice(["running", "completed", "failed"])))
    took_updates = time.perf_counter() - start
    start = time.perf_counter()
    assert view.draw(True)
    took_draw = time.perf_counter() - start
    size = len(view.grid.value.encode())
    print(f"1,000 updates {1000 * took_updates:.1f} ms, redraw {1000 * took_draw:.1f} ms, "
          f"grid {size / 1000:.1f} kB, header {len(view.header.value)} B")
    assert len(Cells(view.grid.value).cells) == n
    assert size < 100_000
    assert took_updates + took_draw < 0.1


def test_long_values_are_cut_short_in_the_tooltips() -> None:
    """The worst case at 1,000 elements: long labels full of characters HTML escapes, every
    element ended with an hours-long duration. The grid stays well under 150 kB."""
    long = "params={'lr': 0.001, 'model': \"<resnet50>\", 'optimizer': 'adamw'}"
    view = WidgetSweepView("long", "hpc", [long] * 1000, waiting=False)
    for i in range(1000):
        view.update(i, up("timed_out", started=time.time() - 36_000))
    view.draw(True)
    title = Cells(view.grid.value).cells[999][1]
    assert title.startswith("#999 params={'lr': 0.001, ") and "…: timed_out, 10:00:00" in title
    size = len(view.grid.value.encode())
    print(f"worst-case grid {size / 1000:.1f} kB")
    assert size < 120_000


def test_a_huge_sweep_shares_cells_and_stays_bounded() -> None:
    n = 25_000
    view = WidgetSweepView("big", "hpc", [f"seed={i}" for i in range(n)], waiting=False)
    view.update(7, up("failed"))
    view.update(30, up("running"))
    view.draw(True)
    cells = Cells(view.grid.value).cells
    assert len(cells) == MAX_CELLS
    # a shared cell shows the state that most needs an eye, and counts them all
    assert cells[0] == ("s-failed", "#0-#24: 24 prepared, 1 failed")
    assert cells[1] == ("s-running", "#25-#49: 24 prepared, 1 running")
    assert len(view.grid.value.encode()) < 150_000


def test_the_last_output_is_the_latest_running_elements() -> None:
    view = WidgetSweepView("out", "hpc", ["a=1", "a=2", "a=3"], waiting=False)
    view.update(0, up("running", out="zero 1\n"))
    view.update(1, up("running", out="one 1\n"))
    view.update(0, up("running"))  # a poll with nothing new does not make it the latest
    view.draw(True)
    assert "#1 a=2" in view.output.value and "one 1" in view.output.value
    view.update(0, up("running", out="zero 2\n"))
    view.draw(True)
    assert "#0 a=1" in view.output.value and "zero 1\nzero 2" in view.output.value
    view.update(0, up("completed", out="zero 3\n"))  # it ended: back to the other one
    view.draw(True)
    assert "#1 a=2" in view.output.value
    view.update(1, up("completed"))
    view.draw(True)
    assert view.output.value == "" and view.output.layout.display == "none"


def test_a_skipped_redraw_loses_no_state(monkeypatch: pytest.MonkeyPatch) -> None:
    view = WidgetSweepView("keep", "hpc", ["a", "b"], waiting=False)
    monkeypatch.setattr(WidgetView.budget, "take", lambda cost, force: force)  # spent
    view.update(0, up("running", out="hello\n"))
    assert not view.draw(False)  # routine: put off
    assert "rm-count-running" not in view.header.value
    view.update(1, up("queued"))
    assert view.draw(None)  # the counts moved: it goes
    assert "rm-count-running" in view.header.value and "rm-count-queued" in view.header.value
    assert "hello" in view.output.value
    view.draw(True)
    assert states_of(view) == ["running", "queued"]


def test_the_views_thread_draws_what_came_last(shown: list[WidgetSweepView]) -> None:
    """No news after the last element ended, and no finished() yet (results load): the
    grid put off by GRID_INTERVAL is drawn all the same."""
    view = WidgetSweepView("last", "hpc", [f"seed={i}" for i in range(100)], waiting=False)
    shown.append(view)
    view.show()
    for state in ("running", "completed"):
        for i in range(100):
            view.update(i, up(state))
    deadline = time.monotonic() + GRID_INTERVAL + 2
    while states_of(view) != ["completed"] * 100:
        assert time.monotonic() < deadline, states_of(view)
        time.sleep(0.05)
    assert "100/100 done" in view.header.value and view.bar.value == 100


def test_a_thousand_elements_changing_state_three_times_send_few_messages(
        shown: list[WidgetSweepView]) -> None:
    """1,000 elements go queued, running, completed over about 3 s, from 4 threads, with
    output; the view sends a handful of messages per redraw and redraws at most every
    SWEEP_INTERVAL (the big grid every GRID_INTERVAL), so 15 a second at the very most,
    whatever the sweep's size."""
    n = 1000
    view = WidgetSweepView("1a2b3c4d", "hpc", [f"seed={i}" for i in range(n)], waiting=False)
    shown.append(view)
    sent = Sent(view)
    view.show()
    started = time.monotonic()

    def feed(indices: list[int]) -> None:
        for state in ("queued", "running", "completed"):
            for k, i in enumerate(indices):
                view.update(i, up(state, out=f"{state} {i}\n"))
                if k % 10 == 0:
                    time.sleep(0.04)

    threads = [threading.Thread(target=feed, args=(list(range(k, n, 4)),)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(2 * SWEEP_INTERVAL)
    span = time.monotonic() - started
    view.finished(["1000 completed"])
    size = sum(s for _, _, s in sent.messages)
    print(f"{len(sent.messages)} messages in {span:.1f} s, busiest second "
          f"{sent.busiest_second()}, {size / 1000:.0f} kB")
    redraws = 1 / SWEEP_INTERVAL + 1  # in any one second, at the most
    assert sent.busiest_second() <= 4 * redraws + 1 / GRID_INTERVAL <= 20
    assert len(sent.messages) <= 4 * (span / SWEEP_INTERVAL + 3)
    grids = len([w for _, w, _ in sent.messages if w is view.grid])
    assert 2 <= grids <= span / GRID_INTERVAL + 2  # live, and the big one kept rare
    assert states_of(view) == ["completed"] * n  # and ends with every element's last state
    assert view.counts() == {"completed": n}


def test_the_view_shares_the_task_views_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[tuple[int, bool]] = []
    original = WidgetView.budget.take
    monkeypatch.setattr(WidgetView.budget, "take",
                        lambda cost, force: taken.append((cost, force)) or original(cost, force))
    view = WidgetSweepView("shared", "hpc", ["a"], waiting=False)
    view.update(0, up("running"))
    view.draw(None)
    assert taken and taken[-1][1] is True  # a new count goes at once, out of the same budget


def test_cancel_calls_on_cancel_once(shown: list[WidgetSweepView]) -> None:
    calls: list[int] = []
    view = WidgetSweepView("stop", "hpc", ["a", "b"], lambda: calls.append(1))
    shown.append(view)
    assert view.cancel.disabled  # a waiting cell keeps the kernel busy: a click would wait
    view.detached()
    assert not view.cancel.disabled
    view.cancel.click()
    view.cancel.click()  # a second click that was on its way
    assert calls == [1]
    assert view.cancel.disabled and view.cancel.description == "Cancelling"


def test_finished_shows_its_lines_and_disables_cancel(shown: list[WidgetSweepView]) -> None:
    view = WidgetSweepView("done", "hpc", ["a", "b", "c"], waiting=False)
    shown.append(view)
    view.show()
    view.update(0, up("completed"))
    view.update(1, up("failed"))
    view.update(2, up("running"))
    view.finished(["1 completed, 1 failed", "loaded results"])
    assert "<div>1 completed, 1 failed</div><div>loaded results</div>" in view.header.value
    assert view.cancel.disabled
    assert states_of(view) == ["completed", "failed", "running"]
    view.detached()  # too late to cancel anything
    assert view.cancel.disabled
    assert view._thread is not None
    view._thread.join(1)
    assert not view._thread.is_alive()  # its drawing thread stopped


def test_the_bar_says_how_the_sweep_ended() -> None:
    good = WidgetSweepView("g", "hpc", ["a", "b"], waiting=False)
    bad = WidgetSweepView("b", "hpc", ["a", "b"], waiting=False)
    for i in range(2):
        good.update(i, up("completed"))
        bad.update(i, up("completed" if i else "lost"))
    good.finished([])
    bad.finished([])
    assert (good.bar.value, good.bar.bar_style) == (2, "success")
    assert (bad.bar.value, bad.bar.bar_style) == (2, "danger")


def test_text_prints_a_line_per_change_of_counts_not_per_update(capsys: Any) -> None:
    view = TextSweepView("1a2b3c4d", "hpc", ["seed=0", "seed=1", "seed=2"])
    view.interval = 0.0  # every change of the counts may print
    view.show()
    view.update(0, up("queued"))
    view.update(1, up("queued"))
    view.update(0, up("queued", out="nothing new\n"))
    view.update(0, up("running", out="line\n"))
    for k in range(50):  # polls: output, progress, the same states
        view.update(0, up("running", out=f"line {k}\n"))
        view.update(1, up("queued"))
    view.update(0, up("completed"))
    view.update(1, up("running"))
    view.update(2, up("failed"))
    view.update(1, up("completed"))
    view.finished(["2 completed, 1 failed"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sweep 1a2b3c4d on hpc: 0/3 done · 3 prepared · ")
    said = [line.split(": ", 1)[1].rsplit(" · ", 1)[0] for line in lines[:-1]]
    assert said == ["0/3 done · 3 prepared",
                    "0/3 done · 2 prepared · 1 queued",
                    "0/3 done · 1 prepared · 2 queued",
                    "0/3 done · 1 prepared · 1 queued · 1 running",  # none for 100 polls
                    "1/3 done (1 completed) · 1 prepared · 1 queued",
                    "1/3 done (1 completed) · 1 prepared · 1 running",
                    "2/3 done (1 completed, 1 failed) · 1 running",
                    "3/3 done (2 completed, 1 failed)"]
    assert lines[-1] == "2 completed, 1 failed"  # the counts were said already


def test_text_is_rate_limited_but_always_says_the_end(capsys: Any) -> None:
    n = 1000
    view = TextSweepView("1a2b3c4d", "hpc", [f"seed={i}" for i in range(n)])
    view.show()
    for state in ("queued", "running", "completed"):
        for i in range(n):
            view.update(i, up(state))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines  # the first, and the end at once (TEXT_INTERVAL is 10 s)
    assert "1000/1000 done (1000 completed)" in lines[-1]
    view.finished(["1000 completed"])
    assert capsys.readouterr().out == "1000 completed\n"  # the counts were said already


def test_text_is_quiet_once_the_cell_stopped_waiting(capsys: Any) -> None:
    view = TextSweepView("bg", "hpc", ["a"])
    view.show()
    view.detached()  # printed from a session thread, it would land in another cell
    view.update(0, up("completed"))
    view.finished(["1 completed"])
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_sweep_view_picks_widgets_or_text(monkeypatch: pytest.MonkeyPatch,
                                          capsys: Any) -> None:
    monkeypatch.setattr(sv, "display", lambda *a, **k: None)
    monkeypatch.setenv("REMOTE_MAGIC_DISPLAY", "text")
    text = sweep_view("1a2b3c4d", "hpc", ["a"])
    assert isinstance(text, TextSweepView)
    assert capsys.readouterr().out.startswith("sweep 1a2b3c4d on hpc: 0/1 done")
    monkeypatch.setenv("REMOTE_MAGIC_DISPLAY", "widget")
    widget = sweep_view("1a2b3c4d", "hpc", ["a"], waiting=False)
    assert isinstance(widget, WidgetSweepView)
    widget.finished([])


SWEEP_IN_KERNEL = """\
import random, threading, time
from remote_magic.client.session import Update
from remote_magic.notebook.sweep_view import sweep_view
view = sweep_view('1a2b3c4d', 'hpc', [f'seed={i}' for i in range(1000)], waiting=False)
def feed(indices):
    for state in ('queued', 'running', 'completed'):
        for k, i in enumerate(indices):
            view.update(i, Update('t', state, stdout=f'{state} {i}\\n'))
            if k % 10 == 0:
                time.sleep(0.04)
threads = [threading.Thread(target=feed, args=(list(range(k, 1000, 4)),)) for k in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
time.sleep(0.6)
view.finished(['1000 completed'])
"""


def test_a_sweep_in_a_kernel_sends_a_bounded_message_rate(tmp_path: Path) -> None:
    """The same 3,000 changes of state in a real kernel, counted as the front end receives
    them: comm messages by the kernel's clock, and bytes."""
    kernel = start_kernel(tmp_path, REMOTE_MAGIC_DISPLAY="widget")
    try:
        out = kernel.run(SWEEP_IN_KERNEL, timeout=60)
        assert out.ok, out.error
        opened = {m["content"]["comm_id"]: dict(m["content"]["data"]["state"])
                  for m in out.of_type("comm_open")}
        for m in out.of_type("comm_msg"):  # classes are added after the widget is opened
            opened[m["content"]["comm_id"]].update(m["content"]["data"].get("state", {}))
        assert len(opened) < 20  # a fixed handful of widgets (and their layouts), not 1,000
        shown = next(i for i, m in enumerate(out.messages) if m["msg_type"] == "display_data")
        sent = [(m["header"]["date"].timestamp(), m["content"]["comm_id"],
                 len(json.dumps(m["content"]))) for m in out.messages[shown:]
                if m["msg_type"] == "comm_msg"]  # redraws: not the widgets' construction
        times = sorted(t for t, _, _ in sent)
        span = times[-1] - times[0]
        busiest, first = 0, 0
        for last, t in enumerate(times):
            while t - times[first] >= 1.0:
                first += 1
            busiest = max(busiest, last - first + 1)
        grid = next(c for c, s in opened.items() if "rm-sweep-grid" in s.get("_dom_classes", []))
        grids = [s for _, c, s in sent if c == grid]
        print(f"{len(sent)} comm_msg over {span:.1f} s, busiest second {busiest}, "
              f"{sum(s for _, _, s in sent) / 1000:.0f} kB, largest grid {max(grids)} B")
        assert busiest <= 20
        assert max(grids) < 100_000
        assert 2 <= len(grids) <= span / GRID_INTERVAL + 2
    finally:
        kernel.shutdown()
