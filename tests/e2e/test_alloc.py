"""Allocations, live: one SLURM job holds a worker, and cells sent to its name run there.
Through a real kernel and the sshd fixture in front of the one-node SLURM of this machine.

The node has two cores and each allocation here takes one, so the tests run in this order:
`short` (started first, ends at its walltime near the end), `gpu`, stopped before `node`,
which is lost before the last test starts one more."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.hosts import ssh_host
from helpers.kernel import CLIENT, Kernel, start_kernel

from remote_magic.testing.schedulers import slurm_job_fields, wait_job_state

LONG = "import time\ntime.sleep(300)"


@pytest.fixture(scope="module")
def hpc(tmp_path_factory: pytest.TempPathFactory, sshd: Any, slurm: Any,
        ssh_transport: str) -> Iterator[Kernel]:
    """A kernel whose host `hpc` is the sshd in front of SLURM. An allocation with a one-minute
    walltime (`short`) is started first, with a cell that outlives it, so that its end comes
    while the other tests run (SLURM enforces a walltime 60-90 s late)."""
    root = tmp_path_factory.mktemp("alloc")
    kernel = start_kernel(root, ssh_host(sshd, "hpc", root / "remote", scheduler="slurm",
                                         resources="{walltime: '0:10:00'}"))
    kernel.root = root  # type: ignore[attr-defined]
    kernel.run("%remote_alloc short -q hpc --walltime 1 --cores 1")
    kernel.run(f"%%remote -q short --nowait --name outlived\n{LONG}", timeout=120)
    kernel.short_task = kernel.newest("id")[0]  # type: ignore[attr-defined]
    yield kernel
    for name in ("gpu", "short", "node"):
        kernel.run(f"%remote_alloc --stop {name}", allow_error=True, timeout=60)
    kernel.shutdown()


def task_state(kernel: Kernel, task_id: str) -> tuple[str, str | None]:
    return tuple(kernel.value(f"(lambda r: (r.state, r.reason))({CLIENT}"  # type: ignore
                              f".status(['{task_id}'])[0])"))


def wait_task(kernel: Kernel, task_id: str, states: set[str], timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while True:
        state, reason = task_state(kernel, task_id)
        if state in states:
            return reason
        assert time.monotonic() < deadline, f"task {task_id} still {state}: {reason}"
        time.sleep(0.5)


def allocation(kernel: Kernel, name: str) -> dict[str, Any]:
    return next(a for a in kernel.value(f"{CLIENT}.allocations()") if a["name"] == name)


def test_a_cell_sent_before_the_allocation_runs_waits_for_it_and_says_so(
        hpc: Kernel, slurm: Any) -> None:
    # the node's other core is held, so the allocation has to wait in the queue
    hog = subprocess.run(["sbatch", "--parsable", "-c", "1", "--wrap", "sleep 120"],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        wait_job_state(hog, "RUNNING", timeout=60)
        said = hpc.run("%remote_alloc gpu -q hpc --cores 1 --walltime 0:10:00").stdout
        assert "allocation gpu: job" in said and "queued" in said
        hpc.run("%%remote -q gpu --nowait --name early\nimport os\n"
                "job = os.environ.get('SLURM_JOB_ID')")
        early = hpc.newest("id")[0]
        reason = wait_task(hpc, early, {"submitted"}, 10)
        assert reason is not None and reason.startswith("waiting for allocation gpu: queued")
    finally:
        subprocess.run(["scancel", hog], check=True)
    wait_task(hpc, early, {"completed"}, 120)
    hpc.run("pass")  # its results land at the next cell
    assert hpc.value("job") == allocation(hpc, "gpu")["job_id"]


def test_allocations_are_listed_with_their_job_state_node_and_time_left(hpc: Kernel) -> None:
    table = hpc.run("%remote_alloc").of_type("display_data")[0]["content"]["data"]["text/plain"]
    row = next(line for line in table.splitlines() if line.startswith("gpu "))
    assert "running" in row and " vm " in row and "hpc" in row
    listed = allocation(hpc, "gpu")
    assert listed["state"] == "running" and 0 < listed["time_left"] <= 600
    assert slurm_job_fields(listed["job_id"])["JobName"] == "rm-alloc-gpu"


def test_cells_on_a_running_allocation_run_in_its_one_job_at_once(hpc: Kernel) -> None:
    job = allocation(hpc, "gpu")["job_id"]
    started = time.monotonic()
    for i in range(5):
        hpc.run(f"%%remote -q gpu --rerun\nimport os\njob = os.environ['SLURM_JOB_ID']\nn = {i}")
        assert hpc.value("job") == job and hpc.value("n") == i
    assert time.monotonic() - started < 15  # a job each would queue, start Python, import
    assert hpc.newest("host", "job_id") == ("gpu", None)


def test_tasks_at_once_are_capped_by_its_slots(hpc: Kernel) -> None:
    hpc.run("def span():\n    import time\n    start = time.time()\n    time.sleep(1)\n"
            "    return start, time.time()\n"
            "from remote_magic import RemoteExecutor\n"
            "with RemoteExecutor('gpu', rerun=True) as pool:\n"
            "    spans = sorted(f.result() for f in [pool.submit(span) for _ in range(2)])",
            timeout=120)
    first, second = hpc.value("spans")
    assert second[0] >= first[1]  # one slot (--cores 1): the second waited for the first


def test_kill_of_one_task_leaves_the_allocation_running(hpc: Kernel) -> None:
    hpc.run(f"%%remote -q gpu --nowait --name doomed\n{LONG}")
    doomed = hpc.newest("id")[0]
    wait_task(hpc, doomed, {"running"}, 60)
    assert "cancelling" in hpc.run(f"%remote_kill {doomed}").stdout
    assert wait_task(hpc, doomed, {"cancelled"}, 30) == "cancelled by the user"
    hpc.run("%%remote -q gpu --rerun\nafter = 'still here'")
    assert hpc.value("after") == "still here"


def test_a_new_kernel_finds_the_allocation_and_its_tasks(hpc: Kernel) -> None:
    hpc.run("%%remote -q gpu --nowait --name across\nimport time\ntime.sleep(3)\n"
            "late = 'yes'")
    across = hpc.newest("id")[0]
    hpc.restart()
    hpc.run("%load_ext remote_magic")
    hpc.run(f"%remote_fetch {across}", timeout=60)
    assert hpc.value("late") == "yes"
    hpc.run("%%remote -q gpu --rerun\nagain = 1")
    assert hpc.value("again") == 1


def test_stop_cancels_its_running_tasks_and_a_later_cell_is_refused(hpc: Kernel) -> None:
    hpc.run(f"%%remote -q gpu --nowait --name interrupted\n{LONG}")
    interrupted = hpc.newest("id")[0]
    wait_task(hpc, interrupted, {"running"}, 60)
    job = allocation(hpc, "gpu")["job_id"]
    said = hpc.run("%remote_alloc --stop gpu", timeout=60).stdout
    assert "ended" in said and "stopped by the user" in said
    assert wait_task(hpc, interrupted, {"cancelled"}, 30)
    assert wait_job_state(job, ("CANCELLED", "COMPLETED"), timeout=60)
    out = hpc.run("%%remote -q gpu\nx = 1", allow_error=True)
    assert "allocation gpu has ended" in out.error["evalue"]
    assert "%remote_alloc gpu -q HOST" in out.error["evalue"]


def test_a_lost_worker_makes_its_running_task_lost_and_never_runs_it_again(
        hpc: Kernel) -> None:
    hpc.run("%remote_alloc node -q hpc --cores 1 --walltime 0:10:00")
    hpc.run("%%remote -q node --nowait --name stranded\n"
            "open('runs', 'a').write('once ')\nimport time\ntime.sleep(300)", timeout=120)
    stranded = hpc.newest("id")[0]
    wait_task(hpc, stranded, {"running"}, 120)
    folder = hpc.root / "remote" / "allocs" / "node"  # type: ignore[attr-defined]
    os.kill(json.loads((folder / "worker.json").read_text())["pid"], signal.SIGKILL)
    reason = wait_task(hpc, stranded, {"lost"}, 120)
    assert reason is not None and "allocation node ended while the task ran" in reason
    work = hpc.root / "remote" / "tasks" / stranded / "work"  # type: ignore[attr-defined]
    assert (work / "runs").read_text() == "once "
    assert allocation(hpc, "node")["state"] == "ended"


def test_an_allocation_the_scheduler_refuses_says_why_and_leaves_nothing(hpc: Kernel) -> None:
    out = hpc.run("%remote_alloc bad -q hpc --partition nosuch", allow_error=True)
    assert "refused the allocation's job" in out.error["evalue"]
    assert "partition" in out.error["evalue"].lower()
    assert not (hpc.root / "remote" / "allocs" / "bad").exists()  # type: ignore[attr-defined]
    assert all(a["name"] != "bad" for a in hpc.value(f"{CLIENT}.allocations()"))


def test_the_secret_is_private_to_the_user(hpc: Kernel) -> None:
    for name in ("short", "gpu", "node"):
        secret = hpc.root / "remote" / "allocs" / name / "secret"  # type: ignore[attr-defined]
        assert secret.stat().st_mode & 0o777 == 0o600
        assert secret.parent.stat().st_mode & 0o777 == 0o700


def test_the_end_of_its_walltime_times_out_the_task_still_running(hpc: Kernel) -> None:
    task = hpc.short_task  # type: ignore[attr-defined]
    reason = wait_task(hpc, task, {"timed_out"}, 200)
    assert reason is not None and reason.startswith("allocation short reached its walltime")
    assert allocation(hpc, "short")["state"] == "ended"


def test_an_allocation_rides_its_hosts_ssh_connection(tmp_path: Path, sshd: Any) -> None:
    """No second login (a second 2FA prompt) for an allocation: its session shares the
    connection of the host it is on."""
    kernel = start_kernel(tmp_path, ssh_host(sshd, "hpc2", tmp_path / "remote",
                                             scheduler="slurm"))
    try:
        before = sshd.accepted_logins()
        kernel.run("%remote_alloc solo -q hpc2 --cores 1 --walltime 0:05:00")
        kernel.run("%%remote -q solo\nx = 1", timeout=120)
        kernel.run("%remote_alloc --stop solo", timeout=60)
        assert sshd.accepted_logins() - before == 1
    finally:
        kernel.shutdown()
