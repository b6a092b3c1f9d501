"""`%%remote` cells on localhost in a real kernel, against peers measured in the same run.

Times N trivial cells through the magic (each with --rerun, so each is a real task: prepare,
stage, start, run, retrieve) against ipyparallel's `%%px` on a warm engine in the same kernel
and against the floor of this machine (spawning `python -c pass`); then a cell that imports
scikit-learn and fits a tiny model, run locally and through `%%remote` (where, from the second
such cell on, the warm runner has the imports done). Prints medians and ratios.

The work directory is under the home directory, as a notebook's is (on this machine, /tmp
creates files about ten times slower than the rest of the same disk).

    python bench/localhost_task.py [-n 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import start_new_kernel


def run(client, code: str) -> None:
    reply = client.execute_interactive(code, timeout=60, output_hook=lambda msg: None)
    if reply["content"]["status"] != "ok":
        raise SystemExit(f"cell failed: {reply['content']}")


def timed(fn, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


SKLEARN_CELL = """from sklearn.linear_model import LogisticRegression
import numpy as np
X = np.random.rand(60, 3)
labels = (X[:, 0] > 0.5).astype(int)
score = LogisticRegression().fit(X, labels).score(X, labels)"""

PX_SETUP = """import ipyparallel as ipp
cluster = ipp.Cluster(n=1, log_level=40)
rc = cluster.start_and_connect_sync()
rc.wait_for_engines(1, timeout=120)
rc.activate()"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        root = Path(tmp)
        (root / "hosts.yaml").write_text(f"hosts:\n  localhost:\n    workdir: {root / 'w'}\n")
        env = dict(os.environ, REMOTE_MAGIC_HOME=str(root / "data"),
                   REMOTE_MAGIC_CONFIG=str(root / "hosts.yaml"))
        km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=tmp)
        try:
            run(kc, "%load_ext remote_magic\nx = 1")
            run(kc, "%%remote --rerun\ny = x + 1")  # warm: the agent starts once per kernel
            plain = timed(lambda: run(kc, "y = x + 1"), args.n)
            remote = timed(lambda: run(kc, "%%remote --rerun\ny = x + 1"), args.n)
            reused = timed(lambda: run(kc, "%%remote\ny = x + 1"), args.n)
            run(kc, PX_SETUP)
            run(kc, "%px x = 1")
            px = timed(lambda: run(kc, "%%px\ny = x + 1"), args.n)
            run(kc, "rc.close()\ncluster.stop_cluster_sync()")
            sk_remote = timed(lambda: run(kc, "%%remote --rerun\n" + SKLEARN_CELL), args.n)
            sk_local = timed(lambda: run(kc, SKLEARN_CELL), args.n + 1)[1:]  # imports done
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    floor = timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), args.n)
    med = {k: statistics.median(v) * 1000 for k, v in
           {"floor": floor, "plain": plain, "remote": remote, "reused": reused}.items()}
    print(f"trivial %%remote cell on localhost, median of {args.n} "
          f"({os.cpu_count()} cores, Python {sys.version.split()[0]}):")
    print(f"  floor: python -c pass          {med['floor']:7.1f} ms")
    print(f"  plain local cell (kernel trip) {med['plain']:7.1f} ms")
    print(f"  %%remote --rerun (a new task)  {med['remote']:7.1f} ms  "
          f"= {med['remote'] / med['floor']:.2f}x the floor (target < 3x)")
    print(f"  %%remote, identical task reused {med['reused']:6.1f} ms")
    px_ms = statistics.median(px) * 1000
    print(f"  ipyparallel %%px, warm engine   {px_ms:7.1f} ms; "
          f"%%remote --rerun = {med['remote'] / px_ms:.1f}x %%px")
    first, later = sk_remote[0] * 1000, statistics.median(sk_remote[1:]) * 1000
    local = statistics.median(sk_local) * 1000
    print(f"cell importing scikit-learn and fitting a tiny model (median of {args.n}):")
    print(f"  local (imports already done)   {local:7.1f} ms")
    print(f"  %%remote, first cell           {first:7.1f} ms (a fresh process imports it)")
    print(f"  %%remote, second cell on       {later:7.1f} ms = local + {later - local:.0f} ms "
          f"(second cell: {sk_remote[1] * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
