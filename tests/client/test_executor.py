"""RemoteExecutor: concurrent.futures over the same task path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from remote_magic import RemoteExecutor
from remote_magic.errors import OptionError, RemoteTaskError, UnknownHostError


def slow_square(x: int) -> int:
    import time

    time.sleep(0.2)
    return x * x


def test_submit_and_map(home: Path) -> None:
    with RemoteExecutor("localhost") as pool:
        futures = [pool.submit(slow_square, i) for i in range(6)]
        assert [f.result(timeout=30) for f in futures] == [0, 1, 4, 9, 16, 25]
        assert list(pool.map(pow, [2, 3], [5, 2], timeout=30)) == [32, 9]


def test_large_array_round_trip(home: Path) -> None:
    big = np.arange(20_000_000, dtype=np.float64)  # 160 MB each way
    with RemoteExecutor() as pool:
        out = pool.submit(lambda a: a * 2, big).result(timeout=60)
    assert out.flags.writeable and out[-1] == big[-1] * 2


def test_exception_keeps_its_type_and_remote_traceback(home: Path) -> None:
    def boom(key: str) -> None:
        {}[key]

    with RemoteExecutor() as pool:
        future = pool.submit(boom, "missing")
        with pytest.raises(KeyError) as info:
            future.result(timeout=30)
    assert isinstance(info.value, RemoteTaskError)
    assert "boom" in info.value.remote_traceback and "{}[key]" in info.value.remote_traceback


def test_identical_call_is_reused_unless_rerun(home: Path) -> None:
    import os

    with RemoteExecutor() as pool:
        first = pool.submit(os.getpid).result(timeout=30)
        assert pool.submit(os.getpid).result(timeout=30) == first
    with RemoteExecutor(rerun=True) as pool:
        assert pool.submit(os.getpid).result(timeout=30) != first


def test_shutdown_cancel_futures_kills_tasks(home: Path) -> None:
    import time

    pool = RemoteExecutor()
    future = pool.submit(time.sleep, 60)
    time.sleep(0.5)
    pool.shutdown(wait=True, cancel_futures=True)
    with pytest.raises(RemoteTaskError, match="cancelled"):
        future.result(timeout=1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(pow, 1, 1)


def test_unknown_host_and_unpicklable_argument(home: Path) -> None:
    import threading

    from remote_magic.errors import SerializationError

    with pytest.raises(UnknownHostError, match="localhost"):
        RemoteExecutor("cluster")
    with pytest.raises(OptionError, match="cpus"):
        RemoteExecutor(cpus=4)
    with RemoteExecutor() as pool, pytest.raises(SerializationError, match="_thread.lock"):
        pool.submit(print, threading.Lock())
