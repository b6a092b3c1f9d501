"""Cells on an allocation against cells as jobs of their own, on the live SLURM of this
machine, through a real kernel, with the floor measured in the same run.

  * floor: `sbatch --wait --wrap 'python3 -c pass'`, one job from submission to its end;
  * N trivial `%%remote -q hpc --rerun` cells, each its own job (the way without allocations);
  * `%remote_alloc` and the wait until it runs, then N trivial `%%remote -q alloc --rerun`
    cells on it, and the number of jobs SLURM was given for them (from the job ids: the
    allocation's own, and none per cell);
  * a cell that imports scikit-learn and fits a tiny model, locally and on the allocation
    (from the second such cell on, the worker's warm runner has the imports done).

    python bench/alloc_task.py [-n 20]
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import start_new_kernel

sys.path.insert(0, str(Path(__file__).parent))
from localhost_task import SKLEARN_CELL, run, timed  # noqa: E402

CLIENT = "__import__('remote_magic.client.core', fromlist=['_']).get_client()"


def value(client, expression: str):
    out: list[str] = []

    def keep(msg) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    reply = client.execute_interactive(f"print(repr({expression}))", timeout=60,
                                       output_hook=keep)
    if reply["content"]["status"] != "ok":
        raise SystemExit(f"cell failed: {reply['content']}")
    return ast.literal_eval("".join(out).strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    args = parser.parse_args()
    from remote_magic.testing.schedulers import ensure_slurm

    ensure_slurm()
    floor = timed(lambda: subprocess.run(
        ["sbatch", "--wait", "--quiet", "--wrap", f"{sys.executable} -c pass"],
        check=True, capture_output=True), 5)
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        root = Path(tmp)
        (root / "hosts.yaml").write_text(
            f"hosts:\n  hpc:\n    scheduler: slurm\n    workdir: {root / 'w'}\n"
            f"    python: {sys.executable}\n")
        env = dict(os.environ, REMOTE_MAGIC_HOME=str(root / "data"),
                   REMOTE_MAGIC_CONFIG=str(root / "hosts.yaml"))
        km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=tmp)
        try:
            run(kc, "%load_ext remote_magic\nx = 1")
            run(kc, "%%remote -q hpc --rerun\ny = x + 1")  # the agent, started once
            per_job = timed(lambda: run(kc, "%%remote -q hpc --rerun\ny = x + 1"),
                            max(3, args.n // 4))
            start = time.perf_counter()
            run(kc, "%remote_alloc bench -q hpc --cores 2 --walltime 0:30:00")
            run(kc, "%%remote -q bench --rerun\ny = x + 1")  # waits until it runs
            until_running = time.perf_counter() - start
            jobs_before = value(kc, f"sorted({{r.job_id for r in {CLIENT}.store.list()}}, "
                                    "key=str)")
            on_alloc = timed(lambda: run(kc, "%%remote -q bench --rerun\ny = x + 1"), args.n)
            jobs_after = value(kc, f"sorted({{r.job_id for r in {CLIENT}.store.list()}}, "
                                   "key=str)")
            alloc_job = value(kc, f"{CLIENT}.allocations()[0]['job_id']")
            sk_alloc = timed(lambda: run(kc, "%%remote -q bench --rerun\n" + SKLEARN_CELL),
                             max(3, args.n // 2))
            sk_local = timed(lambda: run(kc, SKLEARN_CELL), max(3, args.n // 2) + 1)[1:]
            run(kc, "%remote_alloc --stop bench")
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    ms = {k: statistics.median(v) * 1000 for k, v in
          {"floor": floor, "job": per_job, "alloc": on_alloc, "sk_local": sk_local}.items()}
    print(f"SLURM on this machine ({os.cpu_count()} cores, Python {sys.version.split()[0]})")
    print(f"  floor: sbatch --wait of python -c pass      {ms['floor']:7.1f} ms (median of 5)")
    print(f"  %%remote -q hpc --rerun, a job per cell      {ms['job']:7.1f} ms")
    print(f"  %remote_alloc until its first cell ran       {until_running * 1000:7.1f} ms")
    print(f"  %%remote -q ALLOC --rerun, median of {args.n:<3d}     {ms['alloc']:7.1f} ms "
          f"(target <= 30 ms) = {ms['alloc'] / ms['job']:.3f}x a job per cell")
    print(f"  jobs for those {args.n} cells: {len(set(jobs_after) - set(jobs_before))} "
          f"new (the allocation is job {alloc_job}; its cells have none of their own)")
    later = statistics.median(sk_alloc[1:]) * 1000
    print(f"  scikit-learn cell: local {ms['sk_local']:.1f} ms, on the allocation first "
          f"{sk_alloc[0] * 1000:.0f} ms, then {later:.1f} ms = local + "
          f"{later - ms['sk_local']:.0f} ms (target <= 100 ms)")


if __name__ == "__main__":
    main()
