"""The live task view: widget models seen through a real kernel's comm messages, text mode."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.kernel import CLIENT, Kernel, start_kernel

from remote_magic.client.session import Update
from remote_magic.client.store import TaskRecord
from remote_magic.wire.states import STATES


class Models:
    """ipywidgets model states, rebuilt from comm_open and comm_msg messages."""

    def __init__(self) -> None:
        self.state: dict[str, dict[str, Any]] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}

    def feed(self, messages: list[dict[str, Any]]) -> None:
        for msg in messages:
            content = msg["content"]
            if msg["msg_type"] == "comm_open":
                self.state[content["comm_id"]] = dict(content["data"]["state"])
            elif msg["msg_type"] == "comm_msg" and content["data"].get("method") == "update":
                comm = content["comm_id"]
                self.state.setdefault(comm, {}).update(content["data"]["state"])
                self.history.setdefault(comm, []).append(content["data"]["state"])

    def with_class(self, name: str) -> tuple[str, dict[str, Any]]:
        found = [(c, s) for c, s in self.state.items() if name in s.get("_dom_classes", [])]
        assert found, f"no widget with class {name}"
        return found[-1]


@pytest.fixture(scope="module")
def widget_kernel(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("widgets")
    kernel = start_kernel(root, REMOTE_MAGIC_DISPLAY="widget")
    kernel.root = root  # type: ignore[attr-defined]
    yield kernel
    kernel.shutdown()


def test_view_reaches_completed_with_full_bar_and_output(widget_kernel: Kernel) -> None:
    out = widget_kernel.run(
        "%%remote --name widgety\nimport time, remote_magic\nfor i in range(5):\n"
        "    remote_magic.progress(i + 1, 5, f'step {i + 1}')\n"
        "    print(f'line {i + 1}', flush=True)\n    time.sleep(0.3)\nfinal = 'ok'")
    models = Models()
    models.feed(out.messages)
    _, root = models.with_class("remote-magic-task")
    assert root["_model_name"] == "VBoxModel"
    assert any("application/vnd.jupyter.widget-view+json" in m["content"]["data"]
               for m in out.of_type("display_data"))
    header_id, header = models.with_class("rm-header")
    assert "rm-state-completed" in header["value"] and "end to end" in header["value"]
    states = [h["value"] for h in models.history[header_id] if "value" in h]
    assert any("rm-state-running" in v for v in states)  # it was live, not only final
    bar_id, bar = models.with_class("rm-progress")
    assert bar["value"] == bar["max"] == 5
    # one redraw, one message per widget: the bar's new total and value travel together
    assert any({"max", "value"} <= set(h) for h in models.history[bar_id])
    _, message = models.with_class("rm-message")
    assert "step 5" in message["value"]
    output_id, output = models.with_class("rm-output")
    tails = [h["value"] for h in models.history[output_id] if h.get("value")]
    assert any("line " in tail for tail in tails)  # the last lines showed while it ran
    # once it ended the cell holds the whole output just below: the view stops repeating it
    assert output["value"] == ""
    assert "line 5" in out.stdout
    assert widget_kernel.value("final") == "ok"


def test_cancel_button_cancels_a_background_task(widget_kernel: Kernel) -> None:
    out = widget_kernel.run("%%remote --nowait --name victim\nimport time\n"
                            "print('getting sleepy', flush=True)\ntime.sleep(60)")
    models = Models()
    models.feed(out.messages)
    button_id, button = models.with_class("rm-cancel")
    assert button["disabled"] is False  # the kernel is free: a click works
    header_id, _ = models.with_class("rm-header")
    time.sleep(0.5)
    click = widget_kernel.client.session.msg(
        "comm_msg", {"comm_id": button_id,
                     "data": {"method": "custom", "content": {"event": "click"}}})
    widget_kernel.client.shell_channel.send(click)

    def cancelled(msg: dict[str, Any]) -> bool:
        content = msg["content"]
        return (msg["msg_type"] == "comm_msg" and content.get("comm_id") == header_id
                and "rm-state-cancelled" in content["data"].get("state", {}).get("value", ""))

    def tail(msg: dict[str, Any]) -> bool:
        content = msg["content"]
        return (msg["msg_type"] == "comm_msg" and content.get("comm_id") == output_id
                and "getting sleepy" in content["data"].get("state", {}).get("value", ""))

    output_id, _ = models.with_class("rm-output")
    later = widget_kernel.drain(30, until=cancelled)
    assert any(cancelled(m) for m in later)
    if not any(tail(m) for m in later):  # drawn by the same update, right after the header
        later += widget_kernel.drain(10, until=tail)
    models.feed(later)
    _, output = models.with_class("rm-output")
    assert "getting sleepy" in output["value"]  # in the background, the view shows the tail


def test_tqdm_loop_is_progress_without_code_changes(widget_kernel: Kernel) -> None:
    out = widget_kernel.run(
        "%%remote\nfrom tqdm import tqdm\nimport time\ntotal = 0\n"
        "for i in tqdm(range(20), desc='crunch'):\n    time.sleep(0.05)\n    total += i")
    models = Models()
    models.feed(out.messages)
    _, bar = models.with_class("rm-progress")
    assert bar["value"] == bar["max"] == 20
    _, message = models.with_class("rm-message")
    assert "crunch" in message["value"]
    assert widget_kernel.value("total") == 190


def test_a_waiting_view_shows_the_time_go_by(widget_kernel: Kernel) -> None:
    out = widget_kernel.run("%%remote\nimport time\ntime.sleep(2)")  # prints nothing
    models = Models()
    models.feed(out.messages)
    header_id, _ = models.with_class("rm-header")
    running = {h["value"] for h in models.history[header_id]
               if "rm-state-running" in h.get("value", "")}
    assert len(running) >= 3  # the elapsed time moved while nothing else did


def test_tqdm_inside_a_function_from_an_earlier_cell_is_progress(widget_kernel: Kernel) -> None:
    widget_kernel.run("import time\nfrom tqdm import tqdm\ndef crunch(n):\n    t = 0\n"
                      "    for i in tqdm(range(n), desc='inner'):\n        time.sleep(0.05)\n"
                      "        t += i\n    return t")
    out = widget_kernel.run("%%remote\nresult = crunch(20)")  # no tqdm in the cell's text
    models = Models()
    models.feed(out.messages)
    _, bar = models.with_class("rm-progress")
    assert bar["value"] == bar["max"] == 20
    assert widget_kernel.value("result") == 190


def test_kernels_of_a_jupyter_server_get_widgets_others_text(tmp_path: Path) -> None:
    for session, widgets in (("analysis.ipynb", True), (None, False)):
        root = tmp_path / str(widgets)
        root.mkdir()
        env = {"JPY_SESSION_NAME": session} if session else {}
        kernel = start_kernel(root, **env)
        try:
            out = kernel.run("%%remote\nx = 1")
            assert bool(out.of_type("comm_open")) is widgets
            assert ("task " in out.stdout) is not widgets
        finally:
            kernel.shutdown()


def test_without_widgets_it_prints_a_few_text_lines(tmp_path: Path) -> None:
    kernel = start_kernel(tmp_path, REMOTE_MAGIC_DISPLAY="text")
    try:
        out = kernel.run("%%remote --name texty\nimport time, remote_magic\nfor i in range(40):\n"
                         "    remote_magic.progress(i + 1, 40)\n    time.sleep(0.05)\nz = 1")
        lines = [line for line in out.stdout.splitlines() if line.startswith("task ")]
        assert not out.of_type("comm_open")
        assert lines[-1].endswith("end to end") and "completed" in lines[-1]
        assert "40/40 (100%)" in lines[-1]
        assert len(lines) <= 5  # state changes and the end, not one per progress report
    finally:
        kernel.shutdown()


def count_draws(view: Any, draws: list[bool]) -> None:
    """Record each redraw `view` made (its `changed` flag) in `draws`."""
    original = view.draw

    def draw(changed: bool) -> bool:
        drew = original(changed)
        if drew:
            draws.append(changed)
        return drew

    view.draw = draw


def test_views_rate_limit_their_redraws() -> None:
    from remote_magic.notebook.widgets import WidgetView

    record = TaskRecord(id="0123456789abcdef", content_hash="x", host="localhost",
                        state="running", started=time.time())
    view = WidgetView(record)
    draws: list[bool] = []
    count_draws(view, draws)
    for i in range(2000):
        view.update(Update(record.id, "running", progress={"done": i, "total": 2000},
                           stdout=f"line {i}\n"))
    assert len(draws) <= 3
    view.update(Update(record.id, "completed"))
    assert draws[-1] is True and "rm-state-completed" in view.header.value
    assert "line 1999" in view.output.value


def test_text_lines_follow_state_and_progress_not_the_clock(capsys: Any) -> None:
    from remote_magic.notebook.widgets import TextView

    record = TaskRecord(id="0123456789abcdef", content_hash="x", host="hpc", state="prepared",
                        reason="waiting for a free slot: hpc runs at most 2 tasks at once")
    view = TextView(record, waiting=True)
    view.interval = 0.0  # every update may draw: only what it says decides what is printed
    view.show()
    view.update(Update(record.id, "prepared"))  # a poll: the host knows nothing of slots
    view.update(Update(record.id, "queued", job_id="4242"))
    for _ in range(50):  # time goes by, nothing else
        view.update(Update(record.id, "queued"))
    view.update(Update(record.id, "running", progress={"done": 1, "total": 2}))
    view.update(Update(record.id, "running", progress={"done": 1, "total": 2}))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    assert "waiting for a free slot" in lines[0]
    assert "job 4242: queued" in lines[1]
    assert "job 4242: running" in lines[2] and "1/2 (50%)" in lines[2]


def test_a_job_id_given_later_shows_in_the_widget() -> None:
    from remote_magic.notebook.widgets import WidgetView

    record = TaskRecord(id="0123456789abcdef", content_hash="x", host="hpc", state="prepared")
    view = WidgetView(record)
    view.update(Update(record.id, "queued", job_id="777"))
    assert "job 777" in view.header.value and "rm-state-queued" in view.header.value
    view.update(Update(record.id, "completed"))


def test_status_watch_with_no_tasks_says_so(widget_kernel: Kernel) -> None:
    widget_kernel.run("%remote_kill --all")
    out = widget_kernel.run("%remote_status --watch -q localhost", timeout=10)
    assert "No tasks" in out.of_type("display_data")[0]["content"]["data"]["text/plain"]


def test_status_watch_stays_live_until_tasks_end(widget_kernel: Kernel) -> None:
    widget_kernel.run("%%remote --nowait --name watched\nimport time\ntime.sleep(1.5)")
    out = widget_kernel.run("%remote_status --watch")
    models = Models()
    models.feed(out.messages)
    table_id, table = models.with_class("rm-status")
    assert "watched" in table["value"] and "running" in table["value"]

    def done(msg: dict[str, Any]) -> bool:
        content = msg["content"]
        return (msg["msg_type"] == "comm_msg" and content.get("comm_id") == table_id
                and "completed" in content["data"].get("state", {}).get("value", ""))

    assert any(done(m) for m in widget_kernel.drain(20, until=done))


def test_status_watch_in_text_mode_prints_until_done(tmp_path: Path) -> None:
    kernel = start_kernel(tmp_path, REMOTE_MAGIC_DISPLAY="text")
    try:
        kernel.run("%%remote --nowait --name watched\nimport time\ntime.sleep(3)")
        out = kernel.run("%remote_status --watch", timeout=30)
        assert "running" in out.stdout and out.stdout.rstrip().splitlines()[-1].find(
            "completed") > 0
        lines = out.stdout.splitlines()
        states = [next(w for w in lines[i + 1].split() if w in STATES)
                  for i, line in enumerate(lines) if line.startswith("id ")]
        # one table per state it saw (submitted, if the first look came that early; running;
        # completed), not one a second for 3 s
        assert 2 <= len(states) <= 3 and len(set(states)) == len(states), out.stdout
    finally:
        kernel.shutdown()


TASK_WHILE_NOT_STOPPED = """\
import os, time, remote_magic
i = 0
while not os.path.exists({stop!r}) and i < 400:
    i += 1
    remote_magic.progress(i, 400, 'tick')
    print('line', i, flush=True)
    time.sleep(0.5)
n = {n}"""

# At most this many comm messages in any one second, by the kernel's own clock.
MESSAGES_BOUND = 100


def busiest_second(times: list[float]) -> int:
    """The most of `times` (seconds) that fall within any one-second window."""
    times, most, first = sorted(times), 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_two_hundred_background_tasks_send_a_bounded_message_rate(tmp_path: Path) -> None:
    """200 real --nowait tasks, each printing a line and moving its bar twice a second, hold
    200 live views in one kernel. While they all run, what the kernel sends on iopub is
    counted over 12 s by the send time in each message's header (the kernel's clock, so
    delays on this busy machine between kernel and test cannot bunch messages up).

    Bound: at most MESSAGES_BOUND (100) comm_msg in any one second, and on average no more
    than the widgets' budget (MESSAGES_PER_SECOND, 60). Each message is one widget's small
    state delta (an HTML string, or a bar's value and total) that the front end applies by
    re-rendering one element, so 100 a second is a few milliseconds of a browser's time per
    second: JupyterLab stays responsive, and the rate does not grow with the number of tasks
    (without a shared budget 200 views sent bursts of 140 a second, with 4-5 messages per
    redraw). The views must still be live: most of them redraw within the window.
    """
    from remote_magic.notebook.widgets import MESSAGE_BURST, MESSAGES_PER_SECOND

    assert MESSAGES_PER_SECOND + MESSAGE_BURST <= MESSAGES_BOUND  # what the budget promises
    stop = tmp_path / "stop"
    kernel = start_kernel(tmp_path, REMOTE_MAGIC_DISPLAY="widget")
    try:
        body = TASK_WHILE_NOT_STOPPED.format(stop=str(stop), n="{n}")
        started = kernel.run(
            f"for _n in range(200):\n    get_ipython().run_cell_magic("
            f"'remote', '--nowait', {body!r}.format(n=_n))", timeout=180)
        models = Models()
        models.feed(started.messages)
        headers = {c for c, s in models.state.items() if "rm-header" in s.get("_dom_classes", [])}
        assert len(headers) == 200
        states = f"[r.state for r in {CLIENT}.store.list()]"
        deadline = time.monotonic() + 60
        while kernel.value(states).count("running") < 200:
            assert time.monotonic() < deadline, "the 200 tasks did not all start"
            time.sleep(1)
        time.sleep(1.5)  # the debt of the views' forced redraws (new state) is paid back
        sent: list[tuple[float, str, int]] = []
        origin = None
        for msg in kernel.drain(12):
            if msg["msg_type"] != "comm_msg":
                continue
            at = msg["header"]["date"].timestamp()
            origin = at if origin is None else origin
            sent.append((at, msg["content"]["comm_id"], len(json.dumps(msg["content"]))))
        span = max(12.0, sent[-1][0] - origin)
        busiest = busiest_second([at for at, _, _ in sent])
        redrawn = {comm for _, comm, _ in sent if comm in headers}
        size = sum(n for _, _, n in sent)
        print(f"{len(sent)} comm_msg in {span:.1f} s ({len(sent) / span:.0f}/s, "
              f"{size / span / 1000:.1f} kB/s), busiest second {busiest}, "
              f"{len(redrawn)} of 200 views redrawn")
        assert busiest <= MESSAGES_BOUND
        assert len(sent) / span <= MESSAGES_PER_SECOND * 1.1
        assert len(redrawn) >= 100  # the budget is shared out, not taken by the first views
        stop.write_text("")
        deadline = time.monotonic() + 60
        while kernel.value(states).count("completed") < 200:
            assert time.monotonic() < deadline, "the 200 tasks did not all end"
            time.sleep(1)
        kernel.run("pass")  # the results land, and each view says so
    finally:
        stop.write_text("")
        kernel.run("%remote_kill --all", timeout=60)
        kernel.shutdown()
