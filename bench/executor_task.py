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


def busy_seconds() -> float:
    """CPU seconds this machine spent busy since boot, all cores (Linux /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def cpu_by_role() -> dict[str, float]:
    """CPU seconds of our host-side processes so far, by role: a keeper's figure includes the
    runners it forked and reaped, the agent's the warm processes and cold tasks it reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    roles = {"agent": 0.0, "keeper": 0.0, "runners": 0.0}
    for entry in Path("/proc").iterdir():
        try:
            comm = (entry / "comm").read_text().strip()
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        own, reaped = (int(stat[11]) + int(stat[12])) / tick, (int(stat[13]) + int(stat[14])) / tick
        if comm == "rm-agent":
            roles["agent"] += own + reaped
        elif comm == "rm-keeper":
            roles["keeper"] += own
            roles["runners"] += reaped
    return roles


def ours(n: int, many: int) -> tuple[list[float], float, float, dict[str, float]]:
    """One call's latency (n times), and the seconds `many` calls take submitted at once, with
    the machine's CPU seconds they took and our processes' share by role."""
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
            time.sleep(1)  # the last calls' processes have ended
            roles, caller, busy = cpu_by_role(), sum(os.times()[:2]), busy_seconds()
            start = time.perf_counter()
            futures = [pool.submit(noop) for _ in range(many)]
            for future in futures:
                future.result(timeout=600)
            burst = time.perf_counter() - start
            time.sleep(0.2)  # the last runner is reaped
            busy = busy_seconds() - busy
            roles = {k: v - roles[k] for k, v in cpu_by_role().items()}
            roles["caller"] = sum(os.times()[:2]) - caller
        get_client().close()
    return one, burst, busy, roles


def theirs(n: int, many: int) -> tuple[list[float], float, float]:
    import ipyparallel as ipp

    cluster = ipp.Cluster(n=2, log_level=40)  # as many engines as this machine has cores
    client = cluster.start_and_connect_sync()
    try:
        client.wait_for_engines(2, timeout=120)
        view = client.load_balanced_view()
        for _ in range(10):
            view.apply_sync(noop)
        one = timed(lambda: view.apply_sync(noop), n)
        busy = busy_seconds()
        start = time.perf_counter()
        results = [view.apply_async(noop) for _ in range(many)]
        for result in results:
            result.get(timeout=600)
        burst = time.perf_counter() - start
        busy = busy_seconds() - busy
    finally:
        client.close()
        cluster.stop_cluster_sync()
    return one, burst, busy


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
    peer_one, peer_burst, peer_busy = theirs(args.n, args.many)
    our_one, our_burst, our_busy, roles = ours(args.n, args.many)
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
    per_task = {k: v / args.many * 1000 for k, v in roles.items()}
    peer_cpu = peer_busy / args.many * 1000
    print(f"  machine CPU per task in the burst: ipyparallel {peer_cpu:.1f} ms, "
          f"ours {our_busy / args.many * 1000:.1f} ms (runners {per_task['runners']:.1f}, "
          f"caller {per_task['caller']:.1f}, agent {per_task['agent']:.1f}, "
          f"keeper {per_task['keeper']:.1f})")
    print(f"  floor: one fork+exit of a warm-sized process {fork * 1000:.2f} ms; one per task "
          f"on {cores} cores caps ours at {cores / fork:.0f} tasks/s before any work")


if __name__ == "__main__":
    main()
