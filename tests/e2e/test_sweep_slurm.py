"""Sweeps as SLURM job arrays, live: `%%remote --map` through a real kernel and the sshd
fixture in front of the single-node cluster on this machine (2 cores)."""

from __future__ import annotations

import subprocess
import textwrap
import time
from typing import Any

import pytest
from helpers.hosts import ssh_host, stage_batch_task
from helpers.kernel import CLIENT, Kernel, start_kernel

from remote_magic.testing.schedulers import slurm_job_fields, slurm_rpc_counts


def cell(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


@pytest.fixture(scope="module")
def hpc(tmp_path_factory: pytest.TempPathFactory, sshd: Any, slurm: Any,
        ssh_transport: str) -> Any:
    root = tmp_path_factory.mktemp("sweep-slurm")
    kernel = start_kernel(root, ssh_host(sshd, "hpc", root / "remote", scheduler="slurm",
                                         max_running=3, resources="{walltime: '0:10:00'}"))
    kernel.root = root  # type: ignore[attr-defined]
    yield kernel
    kernel.run("%remote_kill --all -q hpc", allow_error=True)
    kernel.shutdown()


def newest_sweep(kernel: Kernel) -> str:
    return kernel.value(f"{CLIENT}.store.list()[0].sweep")


def job_ids(kernel: Kernel, sweep: str) -> list[str]:
    return kernel.value(f"[r.job_id for r in {CLIENT}.elements({CLIENT}.sweep({sweep!r}))]")


def test_one_array_job_results_in_order_and_max_running_as_its_throttle(hpc: Kernel) -> None:
    before = slurm_rpc_counts()
    hpc.run("base = 1000")
    out = hpc.run(cell("""
        %%remote -q hpc --map seed=range(8)
        import os
        value = base + seed
        where = (os.environ["SLURM_ARRAY_JOB_ID"], int(os.environ["SLURM_ARRAY_TASK_ID"]))
    """), timeout=180)
    assert out.ok
    assert hpc.value("value") == [1000 + s for s in range(8)]
    where = hpc.value("where")
    assert len({array for array, _ in where}) == 1  # one array job ran every element
    assert [index for _, index in where] == list(range(8))
    submits = slurm_rpc_counts().get("REQUEST_SUBMIT_BATCH_JOB", 0) - \
        before.get("REQUEST_SUBMIT_BATCH_JOB", 0)
    assert submits == 1
    sweep = newest_sweep(hpc)
    ids = job_ids(hpc, sweep)
    # each element names the array task that ran it: its own, or one that took it over
    assert {i.split("_")[0] for i in ids} == {where[0][0]} and ids[0] == f"{where[0][0]}_0"
    assert len(set(ids)) < 8  # trivial elements: a few array tasks ran them all
    fields = slurm_job_fields(ids[0])
    assert fields.get("ArrayTaskThrottle") == "3"  # the host's max_running
    shown = hpc.run(f"%remote_status {sweep}").of_type("display_data")
    table = shown[0]["content"]["data"]["text/plain"]
    assert "sweep of 8" in table and "8/8 done" in table
    assert len(table.splitlines()) == 2  # the header and one row for the whole sweep
    shown = hpc.run(f"%remote_status {sweep} --all").of_type("display_data")
    assert len(shown[0]["content"]["data"]["text/plain"].splitlines()) == 9


def test_failing_elements_raise_after_the_others_load_and_retry_runs_only_them(
        hpc: Kernel) -> None:
    flag = hpc.root / "second-time"  # type: ignore[attr-defined]
    hpc.run(f"flag = {str(flag)!r}")
    out = hpc.run(cell("""
        %%remote -q hpc --map n=range(6)
        import os
        if not os.path.exists(flag):
            if n == 2:
                raise ZeroDivisionError("element two")
            if n == 4:
                os._exit(9)
        result = n * n
    """), timeout=180, allow_error=True)
    assert out.error["ename"] == "SweepFailedError"
    text = "\n".join(out.error["traceback"])
    assert "2 of 6 elements" in text and "2 (n=2): ZeroDivisionError: element two" in text
    assert "4 (n=4)" in text
    assert hpc.value("[r for r in result if isinstance(r, int)]") == [0, 1, 9, 25]
    sweep = newest_sweep(hpc)
    first = job_ids(hpc, sweep)
    flag.write_text("")
    said = hpc.run(f"%remote_retry {sweep}").stdout
    assert "2 elements started again (2, 4)" in said
    hpc.run(f"%remote_fetch {sweep}", timeout=180)
    assert hpc.value("result") == [n * n for n in range(6)]
    again = job_ids(hpc, sweep)
    assert [again[i] for i in (0, 1, 3, 5)] == [first[i] for i in (0, 1, 3, 5)]
    retried = {again[2].split("_")[0], again[4].split("_")[0]}
    assert len(retried) == 1 and retried != {first[0].split("_")[0]}  # one smaller array
    assert {int(again[i].split("_")[1]) for i in (2, 4)} <= {0, 1}


def test_an_identical_sweep_reuses_what_completed(hpc: Kernel) -> None:
    code = cell("""
        %%remote -q hpc --map k=[3, 1, 2]
        doubled = k * 2
    """)
    hpc.run(code, timeout=180)
    before = slurm_rpc_counts().get("REQUEST_SUBMIT_BATCH_JOB", 0)
    out = hpc.run(code, timeout=60)
    assert "3 of 3 elements reuse" in out.stdout
    assert hpc.value("doubled") == [6, 2, 4]
    assert slurm_rpc_counts().get("REQUEST_SUBMIT_BATCH_JOB", 0) == before


def test_cancel_a_sweep_mid_way(hpc: Kernel) -> None:
    hpc.run(cell("""
        %%remote -q hpc --map i=range(6) --nowait
        import time
        time.sleep(0 if i == 0 else 300)
        slept = i
    """), timeout=60)
    sweep = newest_sweep(hpc)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the first element done, others running or queued
        states = hpc.value(f"[r.state for r in {CLIENT}.status("
                           f"[t.id for t in {CLIENT}.elements({CLIENT}.sweep({sweep!r}))])]")
        if states[0] == "completed" and "running" in states:
            break
        time.sleep(1)
    said = hpc.run(f"%remote_kill {sweep}").stdout
    assert f"sweep {sweep}: 5 elements cancelling" in said
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = hpc.value(f"[r.state for r in {CLIENT}.status("
                           f"[t.id for t in {CLIENT}.elements({CLIENT}.sweep({sweep!r}))])]")
        if all(s in ("completed", "cancelled") for s in states):
            break
        time.sleep(1)
    assert states == ["completed"] + ["cancelled"] * 5
    out = hpc.run("pass")  # the next cell loads the ended sweep, saying how it went
    assert f"sweep {sweep}: 6 elements, 1 completed, 5 cancelled" in out.stderr
    assert hpc.value("slept[0]") == 0
    assert hpc.value("all(isinstance(s, Exception) for s in slept[1:])")


def test_one_squeue_answers_for_a_whole_array(agent: Any, slurm: Any) -> None:
    """The agent asks about an array once, by its own id, however many of its elements it
    follows (and each element gets its own answer)."""
    tasks = [f"{i:016x}" for i in range(1, 21)]
    for task in tasks:
        stage_batch_task(agent, "import time\ntime.sleep(30)", task)
    answer = agent.sweeps.op_submit_array(tasks, "slurm", {"walltime": "0:05:00"})
    jobs = answer["jobs"]
    array = jobs[tasks[0]].split("_")[0]
    assert list(jobs.values()) == [f"{array}_{i}" for i in range(20)]
    try:
        time.sleep(1.1)  # past the query interval of anything before
        before = slurm_rpc_counts()
        statuses = agent.op_status({t: {} for t in tasks})
        after = slurm_rpc_counts()
        asked = sum(after.get(k, 0) - before.get(k, 0)
                    for k in ("REQUEST_JOB_INFO", "REQUEST_JOB_INFO_SINGLE"))
        assert asked == 1  # one squeue (sacct only for jobs that left the queue: none yet)
        assert {s["state"] for s in statuses.values()} <= {"queued", "running", "submitted"}
        assert agent.op_kill(tasks) == dict.fromkeys(tasks, "cancelling")
    finally:
        subprocess.run(["scancel", array], capture_output=True)


def _cube(x: int) -> int:
    if x == 4:
        raise ArithmeticError("four")
    return x ** 3


def test_executor_map_on_a_batch_host_is_one_array(home: Any, slurm: Any) -> None:
    from remote_magic import RemoteExecutor
    from remote_magic.client.core import Client

    with open(home / "hosts.yaml", "a") as f:
        f.write(f"  login:\n    scheduler: slurm\n    workdir: {home / 'login'}\n")
    client = Client()
    try:
        before = slurm_rpc_counts().get("REQUEST_SUBMIT_BATCH_JOB", 0)
        with RemoteExecutor("login", client=client) as pool:
            results = pool.map(_cube, range(6), timeout=180)
            assert [next(results) for _ in range(4)] == [0, 1, 8, 27]
            with pytest.raises(ArithmeticError, match="four"):  # and map ends there, as
                next(results)  # concurrent.futures' does
            assert list(pool.map(_cube, [5, 2])) == [125, 8]
        assert slurm_rpc_counts().get("REQUEST_SUBMIT_BATCH_JOB", 0) - before == 1
        arrays = {r.job_id.split("_")[0] for r in client.store.list() if r.sweep}
        assert len(arrays) == 1  # the second map's elements had completed: reused
    finally:
        client.close()
