"""The agent pushes a task's end with its final status: the session uses it instead of asking,
when it starts where this watch had read to (and asks when it does not)."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from remote_magic.client.session import HostSession, Watch
from remote_magic.client.store import TaskStore
from remote_magic.config.hosts import HostConfig

TASK = "00112233445566778899"


def final(stdout: str) -> dict[str, Any]:
    return {"state": "completed", "reason": None, "history": {"completed": 2.0},
            "progress": None, "exitcode": None, "job_id": None, "stdout": stdout,
            "stderr": "", "stdout_end": 10 + len(stdout), "stderr_end": 0, "events": [],
            "events_end": 0, "events_more": False, "output_more": False}


@pytest.fixture
def session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    session = HostSession(HostConfig(name="localhost", workdir=str(tmp_path / "w")),
                          TaskStore(tmp_path / "s.sqlite"))
    session.asked = []

    def call(op: str, **args: Any) -> Any:
        session.asked.append(args["tasks"])
        return {task: final("from a request\n") for task in args["tasks"]}, b""

    monkeypatch.setattr(session, "call", call)
    return session


def watched(session: HostSession) -> Watch:
    """A cell's watch that has read 10 bytes of stdout (polled by hand: no session thread)."""
    watch = Watch(TASK, live_output=True, updates=queue.Queue())
    watch.offsets.update(stdout=10)
    return watch


def test_an_end_pushed_from_where_the_watch_read_needs_no_request(session: Any) -> None:
    session._on_event({"event": "finished", "task": TASK, "status": final("bye\n"),
                       "from": {"stdout": 10, "stderr": 0, "events": 0}})
    watch = watched(session)
    session.poll({TASK: watch})
    assert session.asked == [] and session.polls == 0
    update = watch.updates.get_nowait()
    assert update.final and update.stdout == "bye\n" and update.stdout_at == 10
    assert watch.offsets["stdout"] == 14


def test_an_end_pushed_from_elsewhere_is_asked_for_again(session: Any) -> None:
    session._on_event({"event": "finished", "task": TASK, "status": final("bye\n"),
                       "from": {"stdout": 0, "stderr": 0, "events": 0}})
    watch = watched(session)
    session.poll({TASK: watch})
    assert session.asked == [{TASK: {"stdout": 10, "stderr": 0, "events": 0}}]
    assert watch.updates.get_nowait().stdout == "from a request\n"
    session.poll({})
    assert len(session.asked) == 1  # the pushed status was not kept for later


def test_an_end_met_by_a_poll_keeps_the_result_files_it_came_with(
        session: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent answers a poll that finds a task ended with its small result files (after
    those of other tasks in the same reply): they are kept for loading, not asked for."""
    kept: dict[str, Any] = {}
    monkeypatch.setattr(session.transport, "keep_results",
                        lambda task, listing, payload: kept.update({task: (listing, payload)}))
    files = [{"name": "state.json", "size": 2, "inline": True},
             {"name": "outputs.pkl", "size": 3, "inline": True}]
    monkeypatch.setattr(session, "call", lambda op, **args: (
        {TASK: {**final(""), "files": files, "payload_from": 4}}, b"elseabxyz"))
    session.poll({TASK: watched(session)})
    assert kept == {TASK: (files, b"abxyz")}


def test_a_hosts_own_poll_intervals_win_over_the_kernels(tmp_path: Path) -> None:
    from remote_magic.client.session import PollDefaults

    defaults = PollDefaults(status_interval=30.0, scheduler_poll=60.0)
    plain = HostSession(HostConfig(name="a", workdir=str(tmp_path / "a")),
                        TaskStore(tmp_path / "s.sqlite"), defaults=defaults)
    own = HostSession(HostConfig(name="b", workdir=str(tmp_path / "b"), status_interval=5.0,
                                 scheduler_poll=10.0), TaskStore(tmp_path / "s.sqlite"),
                      defaults=defaults)
    assert (plain.status_interval, plain.scheduler_poll) == (30.0, 60.0)
    assert (own.status_interval, own.scheduler_poll) == (5.0, 10.0)
    defaults.status_interval = None  # %config RemoteMagics.status_interval = None
    assert plain.status_interval is None


def unthreaded(session: HostSession) -> HostSession:
    """Polls made by hand only: the session's thread counts as running already."""
    session._thread = threading.current_thread()
    return session


def test_a_task_the_agent_follows_from_its_start_is_not_asked_about_at_once(
        session: Any) -> None:
    """Started with its end to be pushed ("served"), a new watch makes no poll; a task that
    ends within the quiet time costs no status request at all."""
    unthreaded(session)
    session.started(TASK, {"pid": None, "served": True})
    watch = session.watch(TASK, live_output=True)
    assert TASK not in session._asked_now and watch.quiet_until > 0
    watch.quiet_until = time.monotonic() + 60  # not ended here by a pause of a busy machine
    session.poll(dict(session._watches))
    assert session.asked == []
    session._on_event({"event": "finished", "task": TASK, "status": final("bye\n"),
                       "from": {"stdout": 0, "stderr": 0, "events": 0}})
    session.poll(dict(session._watches), everything=False)
    assert session.asked == [] and watch.updates.get_nowait().stdout == "bye\n"
    assert TASK not in session._watches


def test_a_quiet_task_is_asked_about_once_its_quiet_time_is_over(session: Any) -> None:
    """The agent may not tell the end (it restarted meanwhile): the regular polls take the
    task up after the quiet time."""
    unthreaded(session)
    session.started(TASK, {"pid": None, "served": True})
    watch = session.watch(TASK, live_output=True)
    watch.quiet_until = time.monotonic() - 1
    session.poll(dict(session._watches))
    assert session.asked == [{TASK: {"stdout": 0, "stderr": 0, "events": 0}}]


def test_an_end_pushed_before_its_watch_is_kept_for_it(session: Any) -> None:
    """A task can end before the thread that started it watches it: the pushed end waits
    (others' polls meanwhile do not drop it), and the watch takes it without a request."""
    unthreaded(session)
    session.started(TASK, {"pid": None, "served": True})
    session._on_event({"event": "finished", "task": TASK, "status": final("bye\n"),
                       "from": {"stdout": 0, "stderr": 0, "events": 0}})
    other = Watch("99887766554433221100", live_output=False)
    session.poll({other.task_id: other})
    assert session.asked == [{other.task_id: None}]
    ended: list[Any] = []
    session.watch(TASK, on_final=ended.append)
    session.poll(dict(session._watches), everything=False)
    assert len(session.asked) == 1 and ended[0].final


def test_ends_pushed_for_tasks_never_watched_are_kept_within_a_bound(session: Any) -> None:
    from remote_magic.client.session import PUSHED_MAX

    for i in range(PUSHED_MAX + 5):
        session._on_event({"event": "finished", "task": f"{i:020d}", "status": final(""),
                           "from": None})
        session.started(f"{i:020d}", {"served": True})
    assert len(session._pushed) == PUSHED_MAX and len(session._served) == PUSHED_MAX
    assert f"{PUSHED_MAX + 4:020d}" in session._pushed and f"{0:020d}" not in session._pushed
