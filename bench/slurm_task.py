"""Tasks through a live SLURM, against the scheduler's own latency in the same run.

Needs the local cluster (`bash scripts/slurm.sh start`, as root). Starts a private sshd in
front of it (as a login node would be), then measures:
  * floor: `sbatch --parsable --wrap true` until `scontrol` says COMPLETED;
  * a trivial `%%remote -q hpc --rerun` cell through a real kernel, submit to results in the
    kernel; the difference is our overhead on top of the scheduler (target < 0.3 s);
  * 100 tasks submitted at once (RemoteExecutor): total time, the status round trips the
    session spent polling, and what those polls cost the scheduler (squeue and sacct calls,
    counted by slurmctld and slurmdbd themselves: sdiag, sacctmgr show stats).

    python bench/slurm_task.py [-n 10]
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

from remote_magic import RemoteExecutor
from remote_magic.client.core import Client
from remote_magic.testing.schedulers import slurm_rpc_counts
from remote_magic.testing.sshd import start_sshd


def sbatch_to_completed() -> float:
    start = time.perf_counter()
    job = subprocess.run(["sbatch", "--parsable", "--output=/dev/null", "--wrap", "true"],
                         capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    while True:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True,
                             text=True).stdout
        if "JobState=COMPLETED" in out:
            return time.perf_counter() - start
        time.sleep(0.01)


def cell(client, code: str) -> None:
    reply = client.execute_interactive(code, timeout=300, output_hook=lambda msg: None)
    if reply["content"]["status"] != "ok":
        raise SystemExit(f"cell failed: {reply['content']}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=10)
    parser.add_argument("--many", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = start_sshd(root / "sshd")
        try:
            config = root / "hosts.yaml"
            config.write_text(
                f"hosts:\n  hpc:\n    address: {server.user}@{server.host}\n"
                f"    port: {server.port}\n    identity_file: {server.key_path}\n"
                f"    known_hosts: {server.known_hosts}\n    python: {sys.executable}\n"
                f"    workdir: {root / 'remote'}\n    scheduler: slurm\n")
            os.environ.update(REMOTE_MAGIC_CONFIG=str(config),
                              REMOTE_MAGIC_HOME=str(root / "data"))
            sbatch_to_completed()  # the first job after a controller start is slow
            floor = [sbatch_to_completed() for _ in range(args.n)]

            km, kc = start_new_kernel(kernel_name="python3", env=dict(os.environ), cwd=tmp)
            try:
                cell(kc, "%load_ext remote_magic\nx = 1")
                cell(kc, "%%remote -q hpc --rerun\ny = x + 1")  # connect, ship the runtime
                ours = []
                for _ in range(args.n):
                    start = time.perf_counter()
                    cell(kc, "%%remote -q hpc --rerun\ny = x + 1")
                    ours.append(time.perf_counter() - start)
            finally:
                kc.stop_channels()
                km.shutdown_kernel(now=True)

            client = Client()
            with RemoteExecutor("hpc", rerun=True, client=client) as pool:
                pool.submit(pow, 1, 1).result()
                session = client.session("hpc")
                polls_before, rpcs_before = session.polls, slurm_rpc_counts()
                start = time.perf_counter()
                futures = [pool.submit(pow, 2, i) for i in range(args.many)]
                assert [f.result(timeout=600) for f in futures] == [2 ** i for i in
                                                                     range(args.many)]
                many = time.perf_counter() - start
                polls = session.polls - polls_before
                rpcs = slurm_rpc_counts()
                squeues = sum(rpcs.get(k, 0) - rpcs_before.get(k, 0)
                              for k in ("REQUEST_JOB_INFO", "REQUEST_JOB_INFO_SINGLE"))
                saccts = rpcs.get("DBD_GET_JOBS_COND", 0) - rpcs_before.get("DBD_GET_JOBS_COND", 0)
            client.close()
        finally:
            server.stop()
    floor_s, ours_s = statistics.median(floor), statistics.median(ours)
    print(f"SLURM on this machine ({os.cpu_count()} cores), login over loopback SSH; "
          f"medians of {args.n}")
    print(f"  floor: sbatch --wrap true -> COMPLETED   {floor_s * 1000:7.0f} ms")
    print(f"  %%remote -q hpc, trivial cell -> results {ours_s * 1000:7.0f} ms  "
          f"(overhead {(ours_s - floor_s) * 1000:.0f} ms on top of SLURM; target < 300 ms)")
    print(f"  {args.many} tasks submitted at once: {many:.1f} s in all, "
          f"{polls} status round trips spent polling, which ran {squeues} squeue and "
          f"{saccts} sacct")


if __name__ == "__main__":
    main()
