"""SLURM, live: a real single-node cluster on this machine, reached through the sshd fixture."""

from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.hosts import count_status_requests, ssh_host
from helpers.kernel import CLIENT, Kernel, start_kernel

from remote_magic import RemoteExecutor
from remote_magic.host.schedulers.slurm import Slurm
from remote_magic.testing.schedulers import (
    ensure_slurm,
    slurm_job_fields,
    slurm_queue_drained,
    wait_job_state,
)

# A host's own job script, kept in a file: the hosts file names the path.
TEMPLATE = """#!/bin/bash
{directives}
#SBATCH --comment=from-the-template-file
export MADE_BY=template
{setup}
cd {workdir}
{runner}
code=$?
[ -s {exitcode} ] || echo "$code" > {exitcode}
exit "$code"
"""


@pytest.fixture(scope="module")
def hpc(tmp_path_factory: pytest.TempPathFactory, sshd: Any, slurm: Any,
        ssh_transport: str) -> Any:
    """A kernel whose hosts `hpc` (a default walltime) and `templated` (a job script template
    file) are the sshd in front of the SLURM cluster."""
    root = tmp_path_factory.mktemp("slurm")
    (root / "job-template.sh").write_text(TEMPLATE)
    kernel = start_kernel(root, ssh_host(sshd, "hpc", root / "remote", scheduler="slurm",
                                         resources="{walltime: '0:10:00'}")
                          + ssh_host(sshd, "templated", root / "remote", scheduler="slurm",
                                     template=root / "job-template.sh"))
    kernel.root = root  # type: ignore[attr-defined]
    yield kernel
    kernel.run("%remote_kill --all -q hpc", allow_error=True)
    kernel.shutdown()



def test_completed_job_with_its_job_id(hpc: Kernel) -> None:
    out = hpc.run("%%remote -q hpc --name on-slurm\nimport os\nprint('job', "
                  "os.environ.get('SLURM_JOB_ID'))\nanswer = 6 * 7\nanswer", timeout=120)
    assert out.result["text/plain"] == "42"
    task_id, job_id, state = hpc.newest("id", "job_id", "state")
    assert state == "completed" and job_id and job_id.isdigit()
    assert f"job {job_id}" in out.stdout
    table = hpc.run("%remote_status --all").of_type("display_data")[0]["content"]["data"]
    assert job_id in table["text/plain"]
    # The cell gave no --walltime: the host's `resources:` default reached the job.
    assert slurm_job_fields(job_id)["TimeLimit"] == "00:10:00"


def test_a_template_file_of_the_host_makes_the_job_script(hpc: Kernel) -> None:
    out = hpc.run("%%remote -q templated\nimport os\nmade_by = os.environ.get('MADE_BY')",
                  timeout=120)
    assert out.ok and hpc.value("made_by") == "template"
    _, job_id, state = hpc.newest("id", "job_id", "state")
    assert state == "completed"
    assert slurm_job_fields(job_id)["Comment"] == "from-the-template-file"


def test_failed_job_brings_back_the_traceback(hpc: Kernel) -> None:
    out = hpc.run("%%remote -q hpc\nvalues = [1, 2]\nvalues[5]", allow_error=True, timeout=120)
    assert out.error["ename"] == "IndexError"
    assert "values[5]" in "\n".join(out.error["traceback"])
    assert hpc.newest("id", "job_id", "state")[2] == "failed"


def test_python_dying_in_a_job_is_failed_with_its_exit_code(hpc: Kernel) -> None:
    out = hpc.run("%%remote -q hpc\nimport os\nos._exit(7)", allow_error=True, timeout=120)
    assert out.error["ename"] == "TaskFailedError"
    assert "failed" in out.error["evalue"] and "7" in out.error["evalue"]


def test_resources_reach_the_scheduler(hpc: Kernel, slurm: Any, sshd: Any) -> None:
    # SLURM puts a job under the user's default account unless accounting knows the one asked
    # for and lets the user charge it: make the account and the association (idempotent).
    for args in (["add", "account", "proj"], ["add", "user", sshd.user, "account=proj"]):
        done = subprocess.run(["sacctmgr", "-i", *args], capture_output=True, text=True)
        assert done.returncode == 0 or "Nothing new added" in done.stdout, done
    hpc.run("%%remote -q hpc --nowait --walltime 0:05:00 --cores 2 --mem 100M "
            "--partition debug --account proj --name sized\nimport time\ntime.sleep(30)")
    task_id, job_id, _ = hpc.newest("id", "job_id", "state")
    fields = slurm_job_fields(job_id)
    assert fields["Account"] == "proj"
    assert fields["TimeLimit"] == "00:05:00"
    assert fields["NumCPUs"] == "2" or fields.get("CPUs/Task") == "2"
    assert fields["Partition"] == "debug" and fields["JobName"].startswith("rm-")
    assert "100M" in fields.get("MinMemoryNode", "") or "100M" in fields.get("mem", "") \
        or "mem=100M" in fields.get("TRES", "") or "mem=100M" in fields.get("ReqTRES", "")
    hpc.run(f"%remote_kill {task_id}")


def test_cancelled_while_running(hpc: Kernel) -> None:
    hpc.run("%%remote -q hpc --nowait --name doomed\nimport time\nprint('up', flush=True)\n"
            "time.sleep(300)")
    task_id, job_id, _ = hpc.newest("id", "job_id", "state")
    deadline = time.monotonic() + 60
    while hpc.newest("id", "job_id", "state")[2] != "running":
        assert time.monotonic() < deadline, "the job never started running"
        hpc.run("%remote_status")
        time.sleep(0.5)
    assert slurm_job_fields(job_id)["JobState"] == "RUNNING"
    assert "cancelling" in hpc.run(f"%remote_kill {task_id}").stdout
    out = hpc.run(f"%remote_fetch {task_id}", allow_error=True, timeout=120)
    assert "cancelled" in out.error["evalue"]
    assert hpc.newest("id", "job_id", "state")[2] == "cancelled"
    assert wait_job_state(job_id, "CANCELLED", timeout=30)["JobState"] == "CANCELLED"


def test_queued_behind_a_job_that_holds_every_cpu(hpc: Kernel, slurm: Any) -> None:
    hpc.run(f"%%remote -q hpc --nowait --cores {slurm.cpus} --name hog\nimport time\n"
            "time.sleep(6)")
    hog = hpc.newest("id", "job_id", "state")[0]
    hpc.run("%%remote -q hpc --nowait --cores 1 --name patient\nwaited = True")
    patient = hpc.newest("id", "job_id", "state")[0]
    seen = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = dict(hpc.value(
            f"[(r.id, r.state) for r in {CLIENT}"
            f".status(['{hog}', '{patient}'])]"))
        seen.add(states[patient])
        if states[patient] == "completed":
            break
        time.sleep(0.3)
    assert "queued" in seen and "completed" in seen
    hpc.run("pass")  # the notice: results land at the next cell
    assert hpc.value("waited") is True


def _sleep_and_return(value: int) -> int:
    time.sleep(0.2)
    return value


def _hog_every_cpu(slurm: Any) -> str:
    """A job holding all of SLURM's CPUs for a minute, running when this returns, so that
    jobs submitted next wait in the queue (scancel it at the end)."""
    slurm_queue_drained()  # the hog must start now: nothing of an earlier test's in its way
    hog = subprocess.run(["sbatch", "--parsable", f"--cpus-per-task={slurm.cpus}",
                          "-o", "/dev/null", "--wrap", "sleep 60"],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        wait_job_state(hog, "RUNNING", timeout=60)
    except BaseException:
        subprocess.run(["scancel", hog], capture_output=True)
        raise
    return hog


def test_queued_jobs_cost_few_polls_each_covering_all(home: Path, sshd: Any, slurm: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """While every job of a host waits in the queue, polls slow down step by step (to
    QUEUED_POLL), and each poll is one status request for all of them, however many."""
    from remote_magic.client.core import Client
    from remote_magic.client.session import QUEUED_POLL

    asked = count_status_requests(monkeypatch)
    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(sshd, "busy", home / "busy", scheduler="slurm"))
    hog = _hog_every_cpu(slurm)
    client = Client()
    try:
        with RemoteExecutor("busy", client=client) as pool:
            futures = [pool.submit(_sleep_and_return, i) for i in range(6)]
            time.sleep(2)  # submitted and seen queued
            session = client.session(client.host("busy"))
            before, began = session.polls, time.monotonic()
            time.sleep(12)
            queued_polls, window = session.polls - before, time.monotonic() - began
            states = {r.state for r in client.status([f.task_id for f in futures])}
            assert states == {"queued"}, states
            subprocess.run(["scancel", hog], check=True)
            assert [f.result(timeout=120) for f in futures] == list(range(6))
    finally:
        subprocess.run(["scancel", hog], capture_output=True)
        client.close()
    # Polling at the fast 0.1 s pace would be ~120 polls here; backing off toward 5 s, ~6.
    assert queued_polls <= window / 1.0, queued_polls
    assert queued_polls >= window / QUEUED_POLL - 1
    assert max(asked) == 6 and len(asked) == session.polls


def test_a_call_queued_by_slurm_is_cancelled_by_its_future(home: Path, sshd: Any,
                                                           slurm: Any) -> None:
    """`Future.cancel()` on a call whose job SLURM still holds in its queue: True, and the
    job is cancelled; the other queued call runs once the CPUs free."""
    from helpers.waiting import wait_for

    from remote_magic.client.core import Client

    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(sshd, "held", home / "held", scheduler="slurm"))
    hog = _hog_every_cpu(slurm)
    client = Client()
    try:
        with RemoteExecutor("held", client=client) as pool:
            queued, kept = pool.submit(_sleep_and_return, 1), pool.submit(_sleep_and_return, 2)
            task = queued.task_id  # type: ignore[attr-defined]
            assert wait_for(lambda: client.store.get(task).state == "queued", 30)
            assert not queued.running() and queued.cancel() and queued.cancelled()
            wait_job_state(client.store.get(task).job_id, "CANCELLED", timeout=30)
            subprocess.run(["scancel", hog], check=True)
            assert kept.result(timeout=120) == 2
        assert wait_for(lambda: client.store.get(task).state == "cancelled", 30)
    finally:
        subprocess.run(["scancel", hog], capture_output=True)
        client.close()


def test_timed_out_by_a_short_walltime(hpc: Kernel) -> None:
    """SLURM rounds --time up to minutes and enforces it 60-90 s late: this takes minutes."""
    out = hpc.run("%%remote -q hpc --walltime 1 --name too-slow\nimport time\ntime.sleep(600)",
                  allow_error=True, timeout=300)
    assert out.error["ename"] == "TaskFailedError"
    assert "timed_out" in out.error["evalue"]
    assert hpc.newest("id", "job_id", "state")[2] == "timed_out"


def test_max_running_holds_on_slurm(tmp_path: Path, sshd: Any, slurm: Any) -> None:
    kernel = start_kernel(tmp_path, ssh_host(sshd, "narrow", tmp_path / "remote",
                                             scheduler="slurm", max_running=1))
    try:
        kernel.run(textwrap.dedent("""\
            from remote_magic import RemoteExecutor
            import time
            def nap(i):
                time.sleep(2)
                return i
            pool = RemoteExecutor("narrow")
            futures = [pool.submit(nap, i) for i in range(3)]"""))
        peak, done = 0, False
        deadline = time.monotonic() + 120
        while not done and time.monotonic() < deadline:
            active, done = kernel.value(
                "(sum(r.state in ('submitted', 'queued', 'running') for r in "
                f"{CLIENT}.store.list()), "
                "all(f.done() for f in futures))")
            peak = max(peak, active)
            time.sleep(0.2)
        assert done and peak == 1
        assert kernel.value("[f.result() for f in futures]") == [0, 1, 2]
    finally:
        kernel.shutdown()


def test_scheduler_on_this_machine_needs_no_ssh(home: Path, slurm: Any) -> None:
    with open(home / "hosts.yaml", "a") as f:
        f.write(f"  login:\n    scheduler: slurm\n    workdir: {home / 'login'}\n")
    with RemoteExecutor("login") as pool:
        assert pool.submit(pow, 2, 9).result(timeout=120) == 512


def test_without_accounting_the_task_files_decide(home: Path) -> None:
    """sacct then says "accounting storage is disabled": every outcome still comes back."""
    info = ensure_slurm(accounting=False)
    try:
        assert not info.accounting
        sacct = Slurm().outcome_command(["1"])
        done = subprocess.run(sacct, capture_output=True, text=True)
        assert done.returncode != 0  # and yet an answer: accounting will never know a job
        assert Slurm().read_outcome(["1"], done.returncode, done.stdout, done.stderr) == {}
        with open(home / "hosts.yaml", "a") as f:
            f.write(f"  plain:\n    scheduler: slurm\n    workdir: {home / 'plain'}\n")
        from remote_magic.client.core import Client
        from remote_magic.errors import RemoteTaskError

        client = Client()
        with RemoteExecutor("plain", client=client) as pool:
            assert pool.submit(pow, 5, 2).result(timeout=120) == 25
            with pytest.raises(ZeroDivisionError):
                pool.submit(lambda: 1 / 0).result(timeout=120)
            sleeper = pool.submit(time.sleep, 300)
            record = client.store.get(sleeper.task_id)  # type: ignore[attr-defined]
            deadline = time.monotonic() + 60
            while client.status([record.id])[0].state != "running":
                assert time.monotonic() < deadline
                time.sleep(0.3)
            client.kill([record])
            with pytest.raises(RemoteTaskError, match="cancelled"):
                sleeper.result(timeout=120)
    finally:
        ensure_slurm(accounting=True)
