"""A batch job's node dies, or the scheduler starts a job again: no task stays `running` for
minutes, and no cell runs twice.

The faults go through the live single-node SLURM (slurmd and a job's processes killed, then
slurmd started again; an administrator's requeue). Grid Engine's node probe runs against the
live cell too. What a live scheduler cannot be made to do on demand (PBS, LSF, a controller
that never answers) is tested on the rules themselves, with real task directories and real
job entry processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO
from helpers.hosts import stage_batch_task

from remote_magic.host import batchops as agent_batch
from remote_magic.host.agent import Agent
from remote_magic.host.batchops import (
    PROBE_TIMEOUT,
    SCHEDULER_SILENCE,
    STALE_HEARTBEAT,
    _doubt,
)
from remote_magic.host.schedulers import JobState, scheduler_for
from remote_magic.host.schedulers.base import Vouch, unknown
from remote_magic.host.schedulers.lsf import job_state as lsf_job_state
from remote_magic.host.schedulers.sge import Sge
from remote_magic.host.schedulers.slurm import Slurm
from remote_magic.testing.schedulers import (
    SLURM_TERMINAL_STATES,
    require_sge,
    slurm_job_fields,
    slurm_node_killed,
    wait_job_state,
)
from remote_magic.wire.states import FINAL_STATES
from remote_magic.wire.taskdir import (
    TaskPaths,
    read_json,
    read_state,
    set_state,
    write_json,
)

ROOT = REPO


@pytest.fixture
def jobs() -> Any:
    """Job ids to cancel after the test, whatever happened: a failed test must not leave
    jobs holding this one-node cluster's CPUs."""
    submitted: list[str] = []
    yield submitted
    if submitted:
        subprocess.run(["scancel", *submitted], capture_output=True)


def counting_cell(tally: Path, then: str = "") -> str:
    """A cell that adds a line to `tally` each time it runs."""
    return f"with open({str(tally)!r}, 'a') as f:\n    f.write('ran\\n')\n{then}"


def wait_states(agent: Agent, task: str, states: set[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        answer = agent.op_status({task: None})[task]
        if answer["state"] in states:
            return answer
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)


# ---------------------------------------------------------------- live SLURM

def test_a_batch_task_whose_node_dies_is_lost_within_the_bound_and_not_run_again(
        agent: Agent, slurm: Any, jobs: list[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's fault. The task is first frozen (SIGSTOP): its heartbeat stops, but slurmd
    answers for the job, so it stays running (a stalled filesystem or a stopped process is not
    a dead node). Then slurmd and every process of the job are killed: the next probe finds
    slurmd silent, and the task is lost, with SLURM's words, and its job cancelled. The job
    was submitted with --no-requeue, and SLURM does not start it again once slurmd is back."""
    tally = tmp_path / "tally"
    task = f"{0xDEAD01:016x}"
    paths = stage_batch_task(agent, counting_cell(tally, "import time\ntime.sleep(600)"), task)
    job_id = agent.op_submit(task, scheduler="slurm", resources={})["job_id"]
    jobs.append(job_id)
    assert slurm_job_fields(job_id)["Requeue"] == "0"
    wait_states(agent, task, {"running"}, timeout=30)
    deadline = time.monotonic() + 30
    while not tally.exists():  # the cell itself has begun
        assert time.monotonic() < deadline, "the cell never ran"
        time.sleep(0.1)
    pids = read_json(paths.pids)
    for pid in pids.values():
        os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + STALE_HEARTBEAT + 15
    while ("slurm", job_id) not in agent.batch.probe_cache:
        answer = agent.op_status({task: None})[task]
        assert answer["state"] == "running", answer
        assert time.monotonic() < deadline, "the silent task was never checked with sstat"
        time.sleep(0.5)
    vouch = agent.batch.probe_cache[("slurm", job_id)][1]
    assert vouch.alive is True, vouch
    assert agent_batch.silence(paths, read_state(paths)) is not None  # no beat for that long
    assert agent.op_status({task: None})[task]["state"] == "running"

    # slurmd is down for every user of this machine meanwhile: ask again soon after the kill
    # rather than up to PROBE_INTERVAL later.
    monkeypatch.setattr(agent_batch, "PROBE_INTERVAL", 1.0)
    with slurm_node_killed([job_id]):
        killed = time.monotonic()
        answer = wait_states(agent, task, FINAL_STATES, timeout=1.0 + PROBE_TIMEOUT + 5)
        took = time.monotonic() - killed
    reason = answer["reason"]
    assert answer["state"] == "lost", answer
    assert reason.startswith("no heartbeat for ") and int(reason.split()[3]) > STALE_HEARTBEAT
    assert f"slurmd on {slurm.node} does not answer for job {job_id}" in reason
    assert "Communication connection failure" in reason
    assert f"job {job_id} was cancelled" in reason
    assert took < 1.0 + PROBE_TIMEOUT + 2
    print(f"lost {took:.1f} s after the kill: {reason}")
    fields = wait_job_state(job_id, SLURM_TERMINAL_STATES, timeout=30)
    assert (fields["JobState"], fields["Requeue"], fields["Restarts"]) == ("CANCELLED", "0", "0")
    assert tally.read_text() == "ran\n"
    assert agent.op_status({task: None})[task]["state"] == "lost"  # final: nothing undoes it


def requeue(job_id: str, release: bool) -> None:
    """What an administrator (a site policy) may do to any job: allow a requeue, requeue it,
    and (with `release`) let it start again at once rather than in ~2 minutes."""
    refused = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    assert refused.returncode != 0 and "disabled" in refused.stderr  # --no-requeue holds
    for args in (["update", f"JobId={job_id}", "Requeue=1"], ["requeue", job_id]):
        subprocess.run(["scontrol", *args], check=True, capture_output=True)
    wait_job_state(job_id, "PENDING", timeout=30)  # set while requeueing, a start time is lost
    if release:
        # slurmd refuses a launch in the second its credential was revoked by the requeue
        # ("Job credential revoked": the job then fails without running)
        time.sleep(2)
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True,
                       capture_output=True)


def test_a_job_slurm_starts_again_does_not_run_the_cell_twice_and_says_why(
        agent: Agent, slurm: Any, jobs: list[str], tmp_path: Path) -> None:
    """The job is requeued while it runs and started again before the agent looks: the second
    start runs nothing and writes why, with SLURM's restart count, into the task's state."""
    tally = tmp_path / "tally"
    task = f"{0xDEAD02:016x}"
    paths = stage_batch_task(agent, counting_cell(tally, "import time\ntime.sleep(600)"), task)
    job_id = agent.op_submit(task, scheduler="slurm", resources={})["job_id"]
    jobs.append(job_id)
    wait_states(agent, task, {"running"}, timeout=30)
    requeue(job_id, release=True)
    fields = wait_job_state(job_id, SLURM_TERMINAL_STATES, timeout=30)
    assert (fields["JobState"], fields["Restarts"]) == ("COMPLETED", "1")
    assert tally.read_text() == "ran\n"
    answer = agent.op_status({task: None})[task]
    # The first run was killed by the requeue: its supervisor recorded the signal (or, killed
    # too, nothing: then the task is lost). Either way the second start is on record.
    assert answer["state"] in ("failed", "lost"), answer
    assert f"SLURM started job {job_id} again (SLURM_RESTART_COUNT=1)" in answer["reason"]
    assert "the cell was not run again" in answer["reason"]
    assert [s["restarts"] for s in read_state(paths)["refused_starts"]] == ["1"]
    assert f"SLURM started job {job_id} again" in paths.job_err.read_text()
    # what the first start said is kept (--open-mode=append)
    assert "DUE TO JOB REQUEUE" in paths.job_err.read_text()


def test_a_job_seen_back_in_the_queue_is_reported_requeued_and_cancelled(
        agent: Agent, slurm: Any, jobs: list[str], tmp_path: Path) -> None:
    """Requeued while it runs, the job waits in the queue again: the next poll says so at
    once (no waiting for the signal's verdict) and cancels it, so it never starts again."""
    tally = tmp_path / "tally"
    task = f"{0xDEAD03:016x}"
    stage_batch_task(agent, counting_cell(tally, "import time\ntime.sleep(600)"), task)
    job_id = agent.op_submit(task, scheduler="slurm", resources={})["job_id"]
    jobs.append(job_id)
    wait_states(agent, task, {"running"}, timeout=30)
    requeue(job_id, release=False)
    time.sleep(agent_batch.CLOCK_SKEW)  # the queue's word must be newer than the task's end
    answer = wait_states(agent, task, FINAL_STATES, timeout=10)
    if answer["state"] == "running":  # the first run left no outcome: the silence rule applies
        answer = wait_states(agent, task, FINAL_STATES, timeout=STALE_HEARTBEAT + 10)
    assert f"SLURM has put job {job_id} back in the queue" in answer["reason"], answer
    assert "it was requeued" in answer["reason"]
    assert f"job {job_id} was cancelled" in answer["reason"]
    fields = wait_job_state(job_id, SLURM_TERMINAL_STATES, timeout=30)
    assert (fields["JobState"], fields["Restarts"]) == ("CANCELLED", "1")
    assert tally.read_text() == "ran\n"


def test_sstat_vouches_for_a_live_job_and_not_for_a_finished_one(slurm: Any,
                                                                 jobs: list[str]) -> None:
    """The probe, against this SLURM: slurmd answers for a running job's batch step; a job
    whose step is over is no longer vouched for."""
    job = subprocess.run(["sbatch", "--parsable", "--no-requeue", "-o", "/dev/null", "--wrap",
                          "sleep 60"], capture_output=True, text=True, check=True).stdout.strip()
    jobs.append(job)
    try:
        wait_job_state(job, "RUNNING", timeout=30)
        time.sleep(0.5)  # the batch step registers just after RUNNING
        probe = Slurm().probe_command(job, JobState("running"))
        done = subprocess.run(probe, capture_output=True, text=True, timeout=PROBE_TIMEOUT)
        assert Slurm().read_probe(job, JobState("running"), done.returncode, done.stdout,
                                  done.stderr).alive is True
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    wait_job_state(job, SLURM_TERMINAL_STATES, timeout=30)
    done = subprocess.run(Slurm().probe_command(job, JobState("running")), capture_output=True,
                          text=True, timeout=PROBE_TIMEOUT)
    assert Slurm().read_probe(job, JobState("running"), done.returncode, done.stdout,
                              done.stderr).alive is not True


# ---------------------------------------------------------------- live Grid Engine

def test_qping_vouches_for_a_live_grid_engine_host_only() -> None:
    info = require_sge()
    sge = Sge()
    for host, alive in ((info.host, True), ("host-that-does-not-exist.invalid", False)):
        job = JobState("running", "r", host=host)
        done = subprocess.run(sge.probe_command("1", job), capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT)
        vouch = sge.read_probe("1", job, done.returncode, done.stdout, done.stderr)
        assert vouch.alive is alive, vouch
    assert "does not answer" in vouch.reason and "host-that-does-not-exist" in vouch.reason


def test_grid_engine_says_on_which_host_a_job_runs() -> None:
    xml = ("<job_info><queue_info><job_list state='running'><JB_job_number>41</JB_job_number>"
           "<state>r</state><queue_name>all.q@vm</queue_name></job_list></queue_info>"
           "<job_info><job_list state='pending'><JB_job_number>42</JB_job_number>"
           "<state>qw</state><queue_name></queue_name></job_list></job_info></job_info>")
    jobs = Sge().parse_status(xml)
    assert (jobs["41"].state, jobs["41"].host) == ("running", "vm")
    assert jobs["42"].host is None and Sge().probe_command("42", jobs["42"]) is None


# ---------------------------------------------------------------- the rules for a silent task

SLURM = scheduler_for("slurm")


def test_a_silent_task_stays_running_while_the_scheduler_vouches_for_it() -> None:
    alive = Vouch(True, "slurmd on its node answers for job 5")
    assert _doubt(SLURM, "5", 600.0, JobState("running"), alive) is None
    # no probe this poll (others took the turn), or none for this scheduler: the queue's word
    assert _doubt(scheduler_for("pbs"), "5", 600.0, JobState("running"), None) is None


def test_a_silent_task_whose_node_does_not_answer_is_lost_with_the_schedulers_words() -> None:
    words = "slurmd on n1 does not answer for job 5 (Communication connection failure)"
    why = _doubt(SLURM, "5", 41.2, JobState("running"), Vouch(False, words))
    assert why == f"no heartbeat for 41 s, and {words}"


def test_a_silent_task_whose_job_waits_in_the_queue_again_was_requeued() -> None:
    why = _doubt(SLURM, "5", 35.0, JobState("queued", "BeginTime"), None)
    assert why is not None and "SLURM has put job 5 back in the queue (BeginTime)" in why


def test_lsf_losing_contact_with_the_host_is_no_vouch() -> None:
    unkwn = lsf_job_state({"JOBID": "7", "STAT": "UNKWN"})
    assert unkwn.state == "running" and unkwn.unreachable
    why = _doubt(scheduler_for("lsf"), "7", 40.0, unkwn, None)
    assert why is not None and "LSF has lost contact with the job's host" in why
    assert not lsf_job_state({"JOBID": "7", "STAT": "RUN"}).unreachable


def test_a_scheduler_that_cannot_be_asked_is_waited_for_then_the_task_is_lost() -> None:
    """A controller restarting says nothing about the job: the task waits SCHEDULER_SILENCE
    beyond the heartbeat's limit before it is called lost."""
    down = unknown("squeue failed (1): Unable to contact slurm controller")
    assert _doubt(SLURM, "5", STALE_HEARTBEAT + SCHEDULER_SILENCE - 1, down, None) is None
    why = _doubt(SLURM, "5", STALE_HEARTBEAT + SCHEDULER_SILENCE + 1, down, None)
    assert why is not None and "could not be asked about job 5" in why
    assert "Unable to contact slurm controller" in why
    no_answer = Vouch(None, "sstat could not ask about job 5: Socket timed out")
    assert _doubt(SLURM, "5", 40.0, JobState("running"), no_answer) is None
    assert "Socket timed out" in (_doubt(SLURM, "5", 100.0, JobState("running"), no_answer)
                                  or "")


def test_a_job_gone_or_ended_is_settled_by_the_usual_rules() -> None:
    assert _doubt(SLURM, "5", 100.0, None, None) is None
    assert _doubt(SLURM, "5", 100.0, JobState("failed", "NODE_FAIL"), None) is None


def test_sstat_output_recorded_here_reads_as_a_dead_node_or_no_answer() -> None:
    """What sstat 22.05 printed on this machine with slurmd killed, and with the controller
    down."""
    dead = ("sstat: error: slurm_job_step_stat: unknown return given from vm: 9001 rc = "
            "Communication connection failure\nsstat: error: problem getting step_layout for "
            "StepId=162.batch: Communication connection failure\n")
    vouch = Slurm().read_probe("162", JobState("running"), 0, "", dead)
    assert vouch.alive is False
    assert vouch.reason.startswith("slurmd on vm does not answer for job 162 "
                                   "(Communication connection failure)")
    controller = ("sstat: error: slurm_job_step_stat: problem getting step_layout for "
                  "StepId=162.batch: Unable to contact slurm controller (connect failure)\n")
    assert Slurm().read_probe("162", JobState("running"), 1, "", controller).alive is None
    assert Slurm().read_probe("162", JobState("running"), 0, "162.batch\n", "").alive is True
    assert Slurm().read_probe("162", JobState("running"), 124, "", "sstat took over 30 s"
                              ).alive is None


def test_a_task_that_beats_or_has_ended_is_never_checked(tmp_path: Path) -> None:
    paths = TaskPaths(tmp_path)
    paths.work.mkdir()
    long_ago = time.time() - 3600
    set_state(paths, "running", when=long_ago, launcher="slurm", job_id="5")
    paths.heartbeat.touch()
    assert agent_batch.silence(paths, read_state(paths)) is None  # beating
    os.utime(paths.heartbeat, (long_ago, long_ago))
    assert agent_batch.silence(paths, read_state(paths)) > 3000  # silent for an hour
    write_json(paths.exitcode, 0)
    assert agent_batch.silence(paths, read_state(paths)) is None  # over: the files decide


# ---------------------------------------------------------------- the job runs a task once

def run_job(paths: TaskPaths, scheduler: str = "slurm", **env: str) -> subprocess.CompletedProcess:
    """The job script's `{runner}` command, as a job would run it."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    environment.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-m", "remote_magic.host.schedulers.job", scheduler,
                           str(paths.root)], capture_output=True, text=True, timeout=60,
                          env=environment, cwd=paths.work)


def test_a_second_start_of_a_job_runs_nothing_and_says_why(agent: Agent,
                                                           tmp_path: Path) -> None:
    tally = tmp_path / "tally"
    paths = stage_batch_task(agent, counting_cell(tally, "answer = 42"), f"{0xCE11:016x}")
    first = run_job(paths, SLURM_JOB_ID="900")
    assert first.returncode == 0 and read_state(paths)["state"] == "completed"
    assert read_json(paths.job_claim)["job_id"] == "900"
    again = run_job(paths, SLURM_JOB_ID="900", SLURM_RESTART_COUNT="1")
    assert again.returncode == 0  # not a failure: a requeue-on-failure policy must not bite
    assert tally.read_text() == "ran\n"
    record = read_state(paths)
    assert record["state"] == "completed"  # the first run's outcome stands
    assert record["reason"].startswith("SLURM started job 900 again (SLURM_RESTART_COUNT=1)")
    assert "a task runs at most once, so the cell was not run again" in record["reason"]
    assert "remote_magic: SLURM started job 900 again" in again.stderr


def test_a_task_whose_state_says_it_ran_is_not_run_again(agent: Agent, tmp_path: Path) -> None:
    """No claim file (an older runtime started it, or it was removed), but the state record
    says the runner started: that is enough. The first run left no outcome (its node died),
    so the task is lost, and says why."""
    tally = tmp_path / "tally"
    paths = stage_batch_task(agent, counting_cell(tally), f"{0xCE12:016x}")
    set_state(paths, "submitted", launcher="sge", job_id="31")
    set_state(paths, "running", when=time.time() - 600)
    done = run_job(paths, "sge", JOB_ID="31", RESTARTED="1")
    assert done.returncode == 0 and not tally.exists()
    record = read_state(paths)
    assert (record["state"], record["checked"]) == ("lost", True)
    assert record["reason"].startswith("its first run left no outcome")
    assert "Grid Engine started job 31 again (RESTARTED=1)" in record["reason"]


def test_two_starts_at_once_run_the_cell_once(agent: Agent, tmp_path: Path) -> None:
    """A node believed dead may still run the job while the scheduler starts it elsewhere:
    the claim file is created with O_EXCL, so exactly one of them runs the cell."""
    tally = tmp_path / "tally"
    paths = stage_batch_task(agent, counting_cell(tally, "import time\ntime.sleep(1)"),
                             f"{0xCE13:016x}")
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    starts = [subprocess.Popen([sys.executable, "-m", "remote_magic.host.schedulers.job", "pbs",
                                str(paths.root)], env=environment, cwd=paths.work,
                               stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=60)[1] for p in starts]
    assert tally.read_text() == "ran\n"
    assert sum("PBS started the job again" in e for e in errors) == 3
    assert read_state(paths)["state"] == "completed"


def test_grid_engine_jobs_never_exit_with_the_codes_it_acts_on(agent: Agent) -> None:
    """Grid Engine runs a job that exits with 99 again, and holds one that exits with 100 in
    an error state: the job never exits so (1 instead); the exit-code file keeps the real
    code."""
    paths = stage_batch_task(agent, "import os\nos._exit(99)", f"{0xCE14:016x}")
    done = run_job(paths, "sge")
    assert done.returncode not in (99, 100) and paths.exitcode.read_text().strip() == "99"
    assert [Sge().job_exit_code(c) for c in (0, 1, 99, 100, 137)] == [0, 1, 1, 1, 137]
    assert Slurm().job_exit_code(99) == 99


# ---------------------------------------------------------------- submitted not to be requeued

@pytest.mark.parametrize(("scheduler", "line"), [
    ("slurm", "#SBATCH --no-requeue"), ("pbs", "#PBS -r n"), ("sge", "#$ -r no"),
    ("lsf", "#BSUB -rn"),
])
def test_every_scheduler_submits_jobs_it_must_not_requeue(scheduler: str, line: str) -> None:
    batch = scheduler_for(scheduler)
    script = batch.render(None, {}, "rm-1", "/w/tasks/1", "", "run it")
    directives = [x for x in script.splitlines() if x.startswith(batch.directive + " ")]
    assert line in directives
    assert script.index(line) < script.index("run it")
    # a host's own template gets it through {directives}
    assert line in batch.render("#!/bin/sh\n{directives}\n{runner}\n", {}, "rm-1",
                                "/w/tasks/1", "", "run it")
