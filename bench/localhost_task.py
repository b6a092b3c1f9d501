"""Per-task time of a trivial `%%remote` cell on localhost, against the floor of this machine.

Runs a real kernel (as a notebook does), times N trivial cells through the magic (each with
--rerun, so each is a real task: prepare, stage, start, run, retrieve), and in the same run
measures the floor: spawning `python -c pass`. Prints medians and the ratio.

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
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


if __name__ == "__main__":
    main()
