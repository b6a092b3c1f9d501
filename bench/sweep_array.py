"""A sweep of trivial cells as ONE job array, on the live SLURM of this machine, against the
floor measured in the same run.

  * floor: N separate `sbatch --wrap 'python -c pass'` jobs, from the first submission until
    the queue has none of them left;
  * a job per element, the way without sweeps: N `RemoteExecutor.submit` calls on the host;
  * `%%remote -q hpc --map i=range(N)` through a real kernel: its time, and what it cost the
    scheduler (sbatch calls, squeue calls, the kernel's polls: squeue per poll);
  * the same sweep on an allocation (`%remote_alloc`, then `--map` through its slots);
  * preparing a 1,000-element sweep in the kernel's process, with a 100 MB input that every
    element reads (serialized once).

    python bench/sweep_array.py [-n 100]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from jupyter_client.manager import start_new_kernel

sys.path.insert(0, str(Path(__file__).parent))
from alloc_task import CLIENT, value  # noqa: E402

SQUEUE = ("REQUEST_JOB_INFO", "REQUEST_JOB_INFO_SINGLE")


def run(client, code: str) -> None:
    reply = client.execute_interactive(code, timeout=900, output_hook=lambda msg: None)
    if reply["content"]["status"] != "ok":
        raise SystemExit(f"cell failed: {reply['content']}")


def until_gone(job_ids: list[str]) -> None:
    while subprocess.run(["squeue", "-h", "-j", ",".join(job_ids)], capture_output=True,
                         text=True).stdout.strip():
        time.sleep(0.1)


def floor(n: int) -> float:
    start = time.perf_counter()
    ids = [subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap",
                           f"{sys.executable} -c pass"], check=True, capture_output=True,
                          text=True).stdout.strip() for _ in range(n)]
    until_gone(ids)
    return time.perf_counter() - start


def counted(counts: dict[str, int], before: dict[str, int], *names: str) -> int:
    return sum(counts.get(k, 0) - before.get(k, 0) for k in names)


def prepare_1000() -> tuple[float, int]:
    """Seconds to prepare a 1,000-element sweep sharing a 100 MB array, and the bytes
    written for it (the shared inputs once, then each element's own)."""
    from remote_magic.client.prepare import TaskOptions
    from remote_magic.client.sweeps import expand, prepare_sweep
    from remote_magic.config.hosts import load_config

    host = load_config().host("localhost")
    namespace = {"weights": np.random.default_rng(0).random(12_500_000), "scale": 2.0}
    start = time.perf_counter()
    sweep = prepare_sweep("score = float(weights[seed]) * scale", namespace, host,
                          TaskOptions(rerun=True), expand({"seed": range(1000)}))
    took = time.perf_counter() - start
    written = sum(f.stat().st_size for e in [sweep.base, *sweep.elements]
                  for f in e.local_dir.iterdir())
    sweep.discard()
    return took, written


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100)
    args = parser.parse_args()
    from remote_magic.testing.schedulers import ensure_slurm, slurm_rpc_counts

    info = ensure_slurm()
    n = args.n
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        root = Path(tmp)
        (root / "hosts.yaml").write_text(
            f"hosts:\n  localhost:\n    workdir: {root / 'l'}\n"
            f"  hpc:\n    scheduler: slurm\n    workdir: {root / 'w'}\n"
            f"    python: {sys.executable}\n")
        env = dict(os.environ, REMOTE_MAGIC_HOME=str(root / "data"),
                   REMOTE_MAGIC_CONFIG=str(root / "hosts.yaml"))
        os.environ.update(REMOTE_MAGIC_HOME=env["REMOTE_MAGIC_HOME"],
                          REMOTE_MAGIC_CONFIG=env["REMOTE_MAGIC_CONFIG"])
        prepared, written = prepare_1000()
        the_floor = floor(n)
        km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=tmp)
        try:
            run(kc, "%load_ext remote_magic\nx = 1\nfrom remote_magic import RemoteExecutor\n"
                    "import time")
            run(kc, "%%remote -q hpc --rerun\ny = x + 1")  # the agent, started once
            start = time.perf_counter()
            run(kc, f"with RemoteExecutor('hpc', rerun=True) as pool:\n"
                    f"    fs = [pool.submit(int.__add__, i, x) for i in range({n})]\n"
                    f"    got = [f.result() for f in fs]")
            per_job = time.perf_counter() - start
            before = slurm_rpc_counts()
            polls = value(kc, f"{CLIENT}.session('hpc').polls")
            start = time.perf_counter()
            run(kc, f"%%remote -q hpc --rerun --map i=range({n})\ny = i + x")
            swept = time.perf_counter() - start
            after = slurm_rpc_counts()
            polls = value(kc, f"{CLIENT}.session('hpc').polls") - polls
            assert value(kc, "y[-1]") == n
            run(kc, f"%remote_alloc bench -q hpc --cores {info.cpus} --walltime 0:30:00")
            run(kc, "%%remote -q bench --rerun\ny = x + 1")  # waits until it runs
            start = time.perf_counter()
            run(kc, f"%%remote -q bench --rerun --map i=range({n})\ny = i + x")
            on_alloc = time.perf_counter() - start
            run(kc, "%remote_alloc --stop bench")
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    sbatches = counted(after, before, "REQUEST_SUBMIT_BATCH_JOB")
    squeues = counted(after, before, *SQUEUE)
    print(f"SLURM on this machine ({info.cpus} cores, Python {sys.version.split()[0]}), "
          f"{n} trivial elements")
    print(f"  floor: {n} x sbatch --wrap 'python -c pass'    {the_floor:7.2f} s")
    print(f"  a job per element (RemoteExecutor.submit)  {per_job:7.2f} s = "
          f"{per_job / the_floor:.2f}x the floor")
    print(f"  %%remote --map, one job array              {swept:7.2f} s = "
          f"{swept / the_floor:.2f}x the floor (target <= 0.5x)")
    print(f"    sbatch calls: {sbatches}; squeue calls: {squeues} in {polls} polls "
          f"({squeues / max(polls, 1):.2f} per poll, target <= 1)")
    print(f"  %%remote --map on an allocation ({info.cpus} slots)  {on_alloc:7.2f} s = "
          f"{on_alloc / the_floor:.3f}x the floor")
    print(f"  preparing 1,000 elements sharing a 100 MB array: {prepared:.2f} s "
          f"(target <= 2 s), {written / 1e6:.0f} MB written")


if __name__ == "__main__":
    main()
