"""Trivial function calls through `RemoteExecutor("localhost")` against ipyparallel's warm
engine, measured in the same run: the latency of one call, and the throughput of many.

ipyparallel is the peer a notebook user would otherwise reach for on one machine: a controller
and engines that stay up, so a call costs a message and no process start. Ours starts a fresh
process per task (isolation, and tasks that outlive the kernel), so the ratio says what that
costs. Every call of ours is a new task (`rerun=True`): an identical call would be answered
from its stored result instead.

    python bench/executor_task.py [-n 50] [--many 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def noop() -> None:
    return None


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def ours(n: int, many: int) -> tuple[list[float], float]:
    """One call's latency (n times), and the seconds `many` calls take submitted at once."""
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:  # where a notebook's work is
        root = Path(tmp)
        (root / "hosts.yaml").write_text(f"hosts:\n  localhost:\n    workdir: {root / 'w'}\n")
        os.environ.update(REMOTE_MAGIC_HOME=str(root / "data"),
                          REMOTE_MAGIC_CONFIG=str(root / "hosts.yaml"))
        os.chdir(tmp)  # on this machine a task runs in the caller's folder
        from remote_magic import RemoteExecutor
        from remote_magic.client.core import get_client

        with RemoteExecutor("localhost", rerun=True) as pool:
            for _ in range(3):  # warm: the agent starts once per process
                pool.submit(noop).result(timeout=60)
            one = timed(lambda: pool.submit(noop).result(timeout=60), n)
            start = time.perf_counter()
            futures = [pool.submit(noop) for _ in range(many)]
            for future in futures:
                future.result(timeout=600)
            burst = time.perf_counter() - start
        get_client().close()
    return one, burst


def theirs(n: int, many: int) -> tuple[list[float], float]:
    import ipyparallel as ipp

    cluster = ipp.Cluster(n=2, log_level=40)  # as many engines as this machine has cores
    client = cluster.start_and_connect_sync()
    try:
        client.wait_for_engines(2, timeout=120)
        view = client.load_balanced_view()
        for _ in range(10):
            view.apply_sync(noop)
        one = timed(lambda: view.apply_sync(noop), n)
        start = time.perf_counter()
        results = [view.apply_async(noop) for _ in range(many)]
        for result in results:
            result.get(timeout=600)
        burst = time.perf_counter() - start
    finally:
        client.close()
        cluster.stop_cluster_sync()
    return one, burst


FORK_FLOOR = """
import gc, os, sys, time
import remote_magic.host.runner, remote_magic.host.zygote  # what a warm process holds at least
gc.freeze()
start = time.perf_counter()
for _ in range(200):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print((time.perf_counter() - start) / 200)
"""


def fork_floor() -> float:
    """Seconds for one fork, exit and reaping of a process the size of a bare warm process.
    Each task of ours is one such process (its runner, forked by the keeper): on a virtual
    machine, where a fork costs a millisecond or more, that bounds the throughput."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", FORK_FLOOR], capture_output=True, text=True,
                         check=True).stdout
    return float(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=50, help="calls timed one at a time")
    parser.add_argument("--many", type=int, default=300, help="calls submitted at once")
    args = parser.parse_args()
    peer_one, peer_burst = theirs(args.n, args.many)
    our_one, our_burst = ours(args.n, args.many)
    fork = fork_floor()
    peer_ms, our_ms = (statistics.median(t) * 1000 for t in (peer_one, our_one))
    peer_rate, our_rate = args.many / peer_burst, args.many / our_burst
    cores = os.cpu_count()
    version = sys.version.split()[0]
    print(f"trivial calls on this machine ({cores} cores, Python {version}); "
          f"latency: median of {args.n}, throughput: {args.many} submitted at once")
    print(f"  ipyparallel, warm engines: apply_sync    {peer_ms:7.1f} ms")
    print(f"  RemoteExecutor('localhost'): submit+result {our_ms:6.1f} ms"
          f"  = {our_ms / peer_ms:.1f}x ipyparallel")
    print(f"  throughput: ipyparallel {peer_rate:6.0f} tasks/s, ours {our_rate:6.0f} tasks/s"
          f"  = {our_rate / peer_rate:.2f}x")
    print(f"  floor: one fork+exit of a warm-sized process {fork * 1000:.2f} ms; one per task "
          f"on {cores} cores caps ours at {cores / fork:.0f} tasks/s before any work")


if __name__ == "__main__":
    main()
