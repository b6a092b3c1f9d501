"""The live task view: widget models seen through a real kernel's comm messages, text mode."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Kernel, start_kernel

from remote_magic.monitor import Update
from remote_magic.store import TaskRecord
from remote_magic.taskdir import STATES


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
    _, bar = models.with_class("rm-progress")
    assert bar["value"] == bar["max"] == 5
    _, message = models.with_class("rm-message")
    assert "step 5" in message["value"]
    _, output = models.with_class("rm-output")
    assert output["value"] == ""  # the output streams into the cell itself, just below
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

    later = widget_kernel.drain(30, until=cancelled)
    assert any(cancelled(m) for m in later)
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
    """Record each redraw of `view` (its `changed` flag) in `draws`."""
    original = view.draw

    def draw(changed: bool) -> None:
        draws.append(changed)
        original(changed)

    view.draw = draw


def test_views_rate_limit_their_redraws() -> None:
    from remote_magic.widgets import WidgetView

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
    from remote_magic.widgets import TextView

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
    from remote_magic.widgets import WidgetView

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


def test_two_hundred_live_views_share_one_redraw_budget() -> None:
    from remote_magic.widgets import REDRAWS_PER_SECOND, WidgetView

    views = [WidgetView(TaskRecord(id=f"{i:016x}", content_hash="x", host="localhost",
                                   state="running", started=time.time())) for i in range(200)]
    draws: list[bool] = []
    for view in views:
        count_draws(view, draws)
    start = time.monotonic()
    while time.monotonic() - start < 2.0:  # every view hears a poll every 0.1 s
        for i, view in enumerate(views):
            view.update(Update(view.record.id, "running", progress={"done": i, "total": 200}))
        time.sleep(0.1)
    elapsed = time.monotonic() - start
    # each view's first update draws; after that the budget holds
    assert len(draws) <= 200 + REDRAWS_PER_SECOND * elapsed * 1.5
    for view in views:
        view.update(Update(view.record.id, "completed"))
    assert len(WidgetView.live) == 0
