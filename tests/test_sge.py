"""Son of Grid Engine, live: a real single-host cell on this machine."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from remote_magic import RemoteExecutor
from remote_magic.core import Client
from remote_magic.errors import RemoteTaskError
from remote_magic.schedulers.sge import Sge
from remote_magic.testing.schedulers import ensure_sge


@pytest.fixture(scope="module")
def sge() -> Any:
    info = ensure_sge()
    if info is None:
        pytest.skip("Grid Engine cannot run on this machine")
    return info


@pytest.fixture
def grid(home: Path, sge: Any) -> str:
    with open(home / "hosts.yaml", "a") as f:
        f.write(f"  grid:\n    scheduler: sge\n    workdir: {home / 'grid'}\n")
    return "grid"


def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def test_completed_and_failed_jobs(grid: str) -> None:
    client = Client()
    with RemoteExecutor(grid, client=client) as pool:
        done = pool.submit(pow, 3, 4)
        assert done.result(timeout=120) == 81
        record = client.store.get(done.task_id)  # type: ignore[attr-defined]
        assert record.state == "completed" and record.job_id and record.job_id.isdigit()
        with pytest.raises(KeyError):
            pool.submit(lambda: {}["x"]).result(timeout=120)


def test_walltime_kill_is_timed_out(grid: str) -> None:
    with RemoteExecutor(grid, walltime="0:00:05") as pool, \
            pytest.raises(RemoteTaskError, match="timed_out"):
        pool.submit(sleepy, 120).result(timeout=180)


def test_kill_cancels_a_job(grid: str) -> None:
    client = Client()
    with RemoteExecutor(grid, client=client) as pool:
        future = pool.submit(sleepy, 120)
        record = client.store.get(future.task_id)  # type: ignore[attr-defined]
        deadline = time.monotonic() + 60
        while client.status([record.id])[0].state != "running":
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert client.kill([record]) == {record.id: "cancelling"}
        with pytest.raises(RemoteTaskError, match="cancelled"):
            future.result(timeout=120)


def test_parsers_read_this_cells_real_output(grid: str) -> None:
    """qstat -xml and qacct -j, as this Grid Engine prints them, through our parsers."""
    import subprocess

    sge = Sge()
    job = sge.job_id(subprocess.run(["qsub", "-terse", "-N", "probe", "-b", "y", "/bin/sleep",
                                     "3"], capture_output=True, text=True, check=True).stdout)
    deadline = time.monotonic() + 60
    seen = set()
    while time.monotonic() < deadline:
        listing = subprocess.run(sge.status_command([job]), capture_output=True,
                                 text=True).stdout
        state = sge.parse_status(listing).get(job)
        if state is None:
            break
        seen.add(state.state)
        time.sleep(0.2)
    assert seen & {"queued", "running"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        outcome = subprocess.run(sge.outcome_command([job]), capture_output=True, text=True)
        found = sge.parse_outcome(outcome.stdout).get(job)
        if found is not None:
            break
        time.sleep(0.5)
    assert found is not None and found.state == "completed" and found.exit_code == 0


def test_resources_reach_grid_engine(grid: str) -> None:
    import subprocess

    client = Client()
    with RemoteExecutor(grid, client=client, cores=2, walltime="0:05:00") as pool:
        future = pool.submit(sleepy, 60)
        record = client.store.get(future.task_id)  # type: ignore[attr-defined]
        details = subprocess.run(["qstat", "-j", record.job_id], capture_output=True,
                                 text=True).stdout
        assert "smp range: 2" in " ".join(details.split()) or "smp 2" in details
        assert "h_rt=300" in details
        client.kill([record])
        with pytest.raises(RemoteTaskError):
            future.result(timeout=120)
