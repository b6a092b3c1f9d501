"""Son of Grid Engine, live: a real single-host cell on this machine, here and over SSH.

Skipped only where Grid Engine cannot run; in CI (CI set) that is a failure instead.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.hosts import ssh_host
from helpers.kernel import CLIENT, Kernel, start_kernel
from helpers.waiting import wait_for

from remote_magic import RemoteExecutor
from remote_magic.client.core import Client
from remote_magic.errors import RemoteTaskError
from remote_magic.host.schedulers.sge import Sge
from remote_magic.testing.schedulers import require_sge


@pytest.fixture(scope="module")
def sge() -> Any:
    return require_sge()


@pytest.fixture(scope="module")
def gridssh(tmp_path_factory: pytest.TempPathFactory, sshd: Any, sge: Any,
            ssh_transport: str) -> Any:
    """A kernel whose host `gridssh` is the sshd in front of the Grid Engine cell."""
    root = tmp_path_factory.mktemp("sge")
    kernel = start_kernel(root, ssh_host(sshd, "gridssh", root / "remote", scheduler="sge"))
    yield kernel
    kernel.run("%remote_kill --all -q gridssh", allow_error=True)
    kernel.shutdown()


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



def test_completed_through_a_kernel_over_ssh(gridssh: Kernel) -> None:
    out = gridssh.run("%%remote -q gridssh\nimport os\nprint('job', os.environ['JOB_ID'])\n"
                      "answer = 6 * 7\nanswer", timeout=120)
    assert out.result["text/plain"] == "42"
    job_id, state = gridssh.newest("job_id", "state")
    assert state == "completed" and job_id.isdigit() and f"job {job_id}" in out.stdout
    assert gridssh.value("answer") == 42


def test_failed_with_its_traceback_through_a_kernel_over_ssh(gridssh: Kernel) -> None:
    out = gridssh.run("%%remote -q gridssh\nvalues = [1, 2]\nvalues[5]", allow_error=True,
                      timeout=120)
    assert out.error["ename"] == "IndexError"
    assert "values[5]" in "\n".join(out.error["traceback"])
    assert gridssh.newest("job_id", "state")[1] == "failed"


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
    # One job unknown to accounting (last, so the loop exits with qacct's error) costs the
    # others nothing: it is left out (gone), the known one keeps its record.
    asked = [job, "99999999"]
    outcome = subprocess.run(sge.outcome_command(asked), capture_output=True, text=True)
    assert outcome.returncode != 0
    jobs = sge.read_outcome(asked, outcome.returncode, outcome.stdout, outcome.stderr)
    assert set(jobs) == {job} and jobs[job].state == "completed"


def test_resources_reach_grid_engine(grid: str) -> None:
    client = Client()
    with RemoteExecutor(grid, client=client, cores=2, walltime="0:05:00") as pool:
        future = pool.submit(sleepy, 60)
        task_id = future.task_id  # type: ignore[attr-defined]
        # submit returns before the job is submitted: its id comes with the start
        assert wait_for(lambda: client.store.get(task_id).job_id is not None, 60)
        record = client.store.get(task_id)
        details = subprocess.run(["qstat", "-j", record.job_id], capture_output=True,
                                 text=True).stdout
        assert "smp range: 2" in " ".join(details.split()) or "smp 2" in details
        assert "h_rt=300" in details
        client.kill([record])
        with pytest.raises(RemoteTaskError):
            future.result(timeout=120)


def job_of_task() -> str | None:
    import os

    return os.environ.get("JOB_ID")


def test_an_allocation_holds_one_grid_engine_job_for_many_calls(grid: str) -> None:
    client = Client()
    try:
        started = client.allocate("gridalloc", grid, {"walltime": "0:10:00"}, slots=2)
        assert started["state"] in ("queued", "starting", "running") and started["job_id"]
        with RemoteExecutor("gridalloc", rerun=True, client=client) as pool:
            jobs = {pool.submit(job_of_task).result(timeout=120) for _ in range(5)}
        assert jobs == {started["job_id"]}  # five calls, one job
        assert client.allocations()[0]["state"] == "running"
        stopped = client.stop_allocation("gridalloc")
        assert stopped["state"] == "ended" and "stopped by the user" in stopped["reason"]
        assert wait_for(lambda: started["job_id"] not in subprocess.run(
            ["qstat"], capture_output=True, text=True).stdout, 60)
    finally:
        client.close()


def test_a_sweep_is_one_grid_engine_array(gridssh: Kernel) -> None:
    """`%%remote --map` over SSH to Grid Engine: one `qsub -t`, elements by SGE_TASK_ID,
    results in order, a failing element named; then its retry as a smaller array."""
    gridssh.run("offset = 7")
    out = gridssh.run(
        "%%remote -q gridssh --map k=range(5)\nimport os\n"
        "if k == 3 and not os.path.exists('/tmp/rm-sge-sweep-ok'):\n"
        "    raise LookupError('three')\n"
        "got = (k + offset, os.environ['JOB_ID'], os.environ['SGE_TASK_ID'])",
        timeout=240, allow_error=True)
    assert out.error["ename"] == "SweepFailedError"
    assert "3 (k=3): LookupError: three" in "\n".join(out.error["traceback"])
    got = gridssh.value("[g if isinstance(g, tuple) else None for g in got]")
    assert [g[0] for g in got if g] == [7, 8, 9, 11]
    assert len({g[1] for g in got if g}) == 1  # one array job
    assert [g[2] for g in got if g] == ["1", "2", "3", "5"]  # Grid Engine counts from 1
    sweep = gridssh.value(f"{CLIENT}.store.list()[0].sweep")
    Path("/tmp/rm-sge-sweep-ok").write_text("")
    try:
        assert "1 element started again (3)" in gridssh.run(f"%remote_retry {sweep}").stdout
        gridssh.run(f"%remote_fetch {sweep}", timeout=240)
    finally:
        Path("/tmp/rm-sge-sweep-ok").unlink()
    assert gridssh.value("got[3][:1]") == (10,)
    assert gridssh.value("got[3][2]") == "undefined"  # one element again: a plain job
