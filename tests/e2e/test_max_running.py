"""max_running: more tasks than a host may run wait locally and start as slots free."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from helpers.waiting import wait_for

from remote_magic import RemoteExecutor
from remote_magic.client.core import Client


def nap(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


def test_waiting_tasks_start_as_slots_free(home: Path) -> None:
    with open(home / "hosts.yaml", "a") as f:
        f.write(f"  narrow:\n    workdir: {home / 'narrow'}\n    max_running: 2\n")
    client = Client()
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            running = [r for r in client.store.list(host="narrow")
                       if r.state in ("submitted", "queued", "running")]
            peak = max(peak, len(running))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with RemoteExecutor("narrow", client=client) as pool:
            futures = [pool.submit(nap, 0.6, i) for i in range(5)]

            def waiting() -> list[Any]:  # staged, and told to wait (submit returns before)
                return [r for r in client.store.list(host="narrow") if r.state == "prepared"
                        and r.remote_dir and "free slot" in (r.reason or "")]
            assert wait_for(lambda: len(waiting()) == 3, 10)
            assert [f.result(timeout=60) for f in futures] == [0, 1, 2, 3, 4]
    finally:
        stop.set()
        sampler.join()
    assert peak == 2
    records = client.store.list(host="narrow")
    assert all(r.state == "completed" for r in records)


def test_a_waiting_task_can_be_cancelled(home: Path) -> None:
    with open(home / "hosts.yaml", "a") as f:
        f.write(f"  single:\n    workdir: {home / 'single'}\n    max_running: 1\n")
    client = Client()
    with RemoteExecutor("single", client=client) as pool:
        first = pool.submit(nap, 1.0, 1)
        second = pool.submit(nap, 0.1, 2)
        record = client.store.get(second.task_id)  # type: ignore[attr-defined]
        assert record.state == "prepared"
        assert client.kill([record]) == {record.id: "cancelled"}
        assert first.result(timeout=30) == 1
        try:
            second.result(timeout=30)
        except Exception as exc:  # noqa: BLE001 - the message is what we check
            assert "cancelled" in str(exc)
        else:
            raise AssertionError("a cancelled task returned a result")
