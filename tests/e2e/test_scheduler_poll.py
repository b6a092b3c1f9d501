"""Login-node etiquette across kernels: two notebooks of one user, each following a SLURM job
on the same host, cost the scheduler one queue query per `scheduler_poll` between them, not
one each. Counted by slurmctld itself (`sdiag`), on the live SLURM behind the sshd fixture."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.hosts import ssh_host
from helpers.kernel import Kernel, start_kernel
from helpers.waiting import wait_for

from remote_magic.testing.schedulers import slurm_rpc_counts

POLL = 6.0  # the host's scheduler_poll, seconds
WINDOW = 18.0  # how long the queries are counted while both kernels follow their jobs
# What one `squeue` (the agent's queue query) costs slurmctld, by sdiag message type.
QUERIES = ("REQUEST_JOB_INFO", "REQUEST_JOB_INFO_SINGLE")


def _queries() -> int:
    counts = slurm_rpc_counts()
    return sum(counts.get(kind, 0) for kind in QUERIES)


@pytest.fixture
def kernels(tmp_path: Path, sshd: Any, slurm: Any) -> Any:
    """Two kernels, each with its own store, whose host `hpc` is the same account and work
    directory on the SLURM host (as a user's notebooks are)."""
    remote = tmp_path / "remote"
    started: list[Kernel] = []
    try:
        for name in ("one", "two"):
            root = tmp_path / name
            root.mkdir()
            started.append(start_kernel(root, ssh_host(
                sshd, "hpc", remote, scheduler="slurm", scheduler_poll=f"{POLL:.0f}s",
                resources="{walltime: '0:05:00'}")))
        yield started
    finally:
        for kernel in started:
            kernel.run("%remote_kill --all -q hpc", allow_error=True)
            kernel.shutdown()


def test_two_kernels_share_one_scheduler_query_per_interval(kernels: list[Kernel]) -> None:
    for kernel in kernels:
        out = kernel.run("%%remote -q hpc --nowait\nimport time\ntime.sleep(60)", timeout=60)
        assert out.ok, out.error
    # Both jobs submitted and followed: each kernel polls its agent every 2 s at most, so
    # without the shared answer each agent would ask the queue every POLL seconds.
    assert wait_for(lambda: all(k.newest("job_id")[0] for k in kernels), 30)
    time.sleep(POLL)  # past the submissions' own queries
    before = _queries()
    time.sleep(WINDOW)
    asked = _queries() - before
    states = [k.newest("state")[0] for k in kernels]
    assert set(states) <= {"submitted", "queued", "running"}, states
    # One query per interval for both kernels (+1: a window can hold one more boundary);
    # apart, the two agents would make about twice that.
    most = math.ceil(WINDOW / POLL) + 1
    assert 1 <= asked <= most, f"{asked} queue queries in {WINDOW:.0f} s, at most {most}"
