"""`RemoteExecutor.submit` returns once the call is prepared and recorded; one thread stages and
starts the tasks in submission order. Checked on the real localhost host: ordering, a start
that fails, and Futures cancelled before their task reached the host."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest
from helpers.waiting import wait_for

from remote_magic import RemoteExecutor
from remote_magic.client.core import Client
from remote_magic.errors import TransportError
from remote_magic.wire.states import State


@pytest.fixture
def client(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    monkeypatch.chdir(home)  # on this machine a task runs in the caller's folder
    c = Client()
    yield c
    c.close()


def held_starts(client: Client, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Starts wait until the returned event is set (the real `start` runs then): what a slow
    host does to the queue of starts, without the waiting."""
    go = threading.Event()
    start = client.start

    def held(*args: Any) -> Any:
        assert go.wait(30)
        return start(*args)

    monkeypatch.setattr(client, "start", held)
    return go


def test_tasks_start_in_the_order_they_were_submitted(client: Client) -> None:
    with RemoteExecutor(client=client, rerun=True) as pool:
        futures = [pool.submit(pow, 2, i) for i in range(12)]
        records = [client.store.get(f.task_id) for f in futures]  # type: ignore[attr-defined]
        assert [f.result(timeout=60) for f in futures] == [2 ** i for i in range(12)]
    submitted = [client.store.get(r.id).submitted for r in records]
    assert all(s is not None for s in submitted)
    assert submitted == sorted(submitted)  # type: ignore[type-var]


def test_submit_returns_before_the_host_is_reached(client: Client,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    go = held_starts(client, monkeypatch)
    with RemoteExecutor(client=client) as pool:
        future = pool.submit(pow, 3, 4)
        record = client.store.get(future.task_id)  # type: ignore[attr-defined]
        assert record.state == State.PREPARED and record.remote_dir is None
        assert not future.done()
        go.set()
        assert future.result(timeout=60) == 81
    assert client.store.get(record.id).state == State.COMPLETED


def test_a_future_cancelled_before_its_start_never_reaches_the_host(
        client: Client, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    go = held_starts(client, monkeypatch)
    with RemoteExecutor(client=client) as pool:
        first, second = pool.submit(pow, 2, 1), pool.submit(pow, 2, 2)
        assert second.cancel() and second.cancelled()
        go.set()
        assert first.result(timeout=60) == 2
        with pytest.raises(CancelledError):
            second.result(timeout=1)
    record = client.store.get(second.task_id)  # type: ignore[attr-defined]
    assert wait_for(lambda: client.store.get(record.id).state == State.CANCELLED, 10)
    assert record.remote_dir is None and not (home / "work" / "tasks" / record.id).exists()


def test_shutdown_cancels_the_tasks_that_did_not_start(client: Client, home: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    go = held_starts(client, monkeypatch)
    pool = RemoteExecutor(client=client)
    futures = [pool.submit(pow, 5, i) for i in range(3)]
    threading.Timer(0.2, go.set).start()  # the first start is under way when shutdown comes
    pool.shutdown(wait=True, cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    assert len(cancelled) >= 2  # every one still queued; the one being started is killed
    for future in cancelled:
        record = client.store.get(future.task_id)  # type: ignore[attr-defined]
        assert record.state == State.CANCELLED and record.remote_dir is None
        assert not (home / "work" / "tasks" / record.id).exists()
    assert all(f.done() for f in futures)


def test_a_start_that_fails_is_the_futures_exception(client: Client,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`submit` has returned when the task is staged: a failure there (here the kernel's copy
    of the task is gone) is the Future's exception, and the store says why."""
    go = held_starts(client, monkeypatch)
    with RemoteExecutor(client=client) as pool:
        future = pool.submit(pow, 2, 3)
        record = client.store.get(future.task_id)  # type: ignore[attr-defined]
        shutil.rmtree(record.local_dir or "")
        go.set()
        with pytest.raises(OSError):
            future.result(timeout=30)
    record = client.store.get(record.id)
    assert record.state == State.FAILED and (record.reason or "").startswith("not started: ")


def test_a_host_that_refuses_the_kernel_raises_at_submit(client: Client, home: Path) -> None:
    """A work directory anyone may write is refused by the host's agent itself: that is about
    the host, not one task, so `submit` raises it (nothing is queued), and the store says
    why the task did not start."""
    workdir = home / "open"
    with open(home / "hosts.yaml", "a") as f:
        f.write(f"  open:\n    workdir: {workdir}\n")
    workdir.mkdir(mode=0o777)
    workdir.chmod(0o777)
    with RemoteExecutor("open", client=client) as pool:
        with pytest.raises(TransportError, match="can be changed by other users"):
            pool.submit(pow, 2, 3)
    records = client.store.list(host="open")
    assert [r.state for r in records] == [State.FAILED]
    assert (records[0].reason or "").startswith("not started: ")
    assert not (workdir / "tasks").exists()
