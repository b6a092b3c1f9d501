"""`Future.cancel()` on RemoteExecutor futures: a call still waiting, here or on the host, is
cancelled with its task; a running one is not (as for any Executor). The live-SLURM case, a
job still queued by the scheduler, is in tests/e2e/test_slurm.py."""

from __future__ import annotations

import time
from concurrent.futures import as_completed
from pathlib import Path

import pytest
from helpers.waiting import wait_for

from remote_magic import RemoteExecutor
from remote_magic.client.core import Client
from remote_magic.wire.states import State


def test_a_call_waiting_for_a_slot_is_cancelled_a_running_one_is_not(home: Path) -> None:
    with open(home / "hosts.yaml", "a") as f:
        f.write(f"  single:\n    workdir: {home / 'single'}\n    max_running: 1\n")
    client = Client()
    try:
        pool = RemoteExecutor("single", client=client)
        running = pool.submit(time.sleep, 30)
        waiting = pool.submit(pow, 2, 5)
        assert wait_for(running.running, 30)  # running on the host: the Future says so
        assert not waiting.running() and not waiting.done()
        assert waiting.cancel() and waiting.cancelled()
        record = client.store.get(waiting.task_id)  # type: ignore[attr-defined]
        assert record.state == State.CANCELLED
        assert not running.cancel() and running.running()  # started: not cancelled
        pool.shutdown(wait=True, cancel_futures=True)  # this one stops a running call
        assert client.store.get(running.task_id).state == State.CANCELLED  # type: ignore
        assert not (home / "single" / "tasks" / waiting.task_id / ".started").exists()  # type: ignore
    finally:
        client.close()


def test_calls_cancelled_in_a_burst(home: Path) -> None:
    """Cancelled right after submit: one not sent yet never reaches the host; one sent but
    not seen running is cancelled there (or had already completed); the rest complete."""
    client = Client()
    try:
        with RemoteExecutor(client=client) as pool:
            futures = [pool.submit(pow, 2, n) for n in range(20)]
            cancelled = [f for f in futures if f.cancel()]
            for n, future in enumerate(futures):
                if future not in cancelled:
                    assert future.result(timeout=60) == 2 ** n
        assert cancelled and all(f.cancelled() for f in cancelled)
        assert len(list(as_completed(futures, timeout=10))) == len(futures)  # none hangs
        for future in cancelled:
            task = future.task_id  # type: ignore[attr-defined]
            assert wait_for(lambda: client.store.get(task).final, 30)  # noqa: B023
            record = client.store.get(task)
            if record.remote_dir is None:
                assert record.state == State.CANCELLED
                assert not (home / "work" / "tasks" / task).exists()
            else:
                assert record.state in (State.CANCELLED, State.COMPLETED), record
    finally:
        client.close()


def test_a_cancel_the_session_thread_heard_of_first_raises_nothing(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session thread can mark a just-cancelled Future (notifying its waiters) while
    cancel() is still killing its task: cancel() then neither notifies again nor raises."""
    from concurrent.futures import wait

    from remote_magic.client.executor import RemoteFuture

    client = Client()
    pool = RemoteExecutor(client=client)
    future = RemoteFuture("00112233445566778899", pool._cancelled)
    monkeypatch.setattr(client.store, "get", lambda task_id: task_id)
    monkeypatch.setattr(client, "kill", lambda records: future.mark_running())  # meanwhile
    assert future.cancel() and future.cancelled()
    assert wait([future], timeout=0).done == {future}
    client.close()


def test_a_future_marked_running_again_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """The session marks a call's Future running at each poll that finds its task running or
    ended: concurrent.futures would log a CRITICAL record (shown on the user's stderr) for
    every mark after the first. A cancelled one is marked once, so that `wait` hears of it."""
    from concurrent.futures import FIRST_COMPLETED, wait

    from remote_magic.client.executor import RemoteFuture

    running = RemoteFuture("a", lambda future: None)
    for _ in range(3):
        running.mark_running()
    assert running.running()
    running.set_result(1)
    running.mark_running()
    cancelled = RemoteFuture("b", lambda future: None)
    assert cancelled.cancel()
    cancelled.mark_running()
    cancelled.mark_running()
    assert wait([cancelled], timeout=1, return_when=FIRST_COMPLETED).done == {cancelled}
    assert not [r for r in caplog.records if r.levelname == "CRITICAL"]
