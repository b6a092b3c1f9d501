"""The agent's batch layer: one throttled queue query for all jobs, and how its answers are merged.

Against the live single-node SLURM where the scheduler can produce the case (many jobs at once,
a controller that does not answer, a job whose Python cannot start), counting what the polls
cost it with its own counters (sdiag, sacctmgr show stats). The merge rules for cases a live
scheduler cannot be made to produce on demand (the queue forgetting a job while accounting lags
behind) are tested on the merge itself, with real task directories.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
from helpers.hosts import stage_batch_task

from remote_magic.host import batchops as agent_batch
from remote_magic.host.agent import Agent
from remote_magic.host.batchops import VERDICT_WAIT, _needs_queue
from remote_magic.host.schedulers import JobState
from remote_magic.host.schedulers.base import unknown
from remote_magic.host.schedulers.slurm import Slurm
from remote_magic.testing.schedulers import (
    sacct_fields,
    slurm_daemon_stopped,
    slurm_rpc_counts,
)
from remote_magic.wire.taskdir import TaskPaths, read_state, set_state, write_json


def task_id(number: int) -> str:
    return f"{number:016x}"


def squeue_and_sacct_since(before: dict[str, int]) -> tuple[int, int]:
    """Queue queries (squeue) and accounting queries (sacct) the scheduler served since."""
    now = slurm_rpc_counts()
    queue = sum(now.get(k, 0) - before.get(k, 0)
                for k in ("REQUEST_JOB_INFO", "REQUEST_JOB_INFO_SINGLE"))
    return queue, now.get("DBD_GET_JOBS_COND", 0) - before.get("DBD_GET_JOBS_COND", 0)


def wait_states(agent: Agent, tasks: list[str], states: set[str],
                timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        answers = agent.op_status(dict.fromkeys(tasks))
        if all(a["state"] in states for a in answers.values()):
            return answers
        assert time.monotonic() < deadline, answers
        time.sleep(0.1)


# ---------------------------------------------------------------- live SLURM

def test_one_squeue_for_all_jobs_at_most_once_a_second(agent: Agent, slurm: Any) -> None:
    tasks = [task_id(n) for n in range(6)]
    before = slurm_rpc_counts()
    start, polls, seen = time.monotonic(), 0, set()
    for count, task in enumerate(tasks, 1):  # each submission wakes the session: a poll
        stage_batch_task(agent, "import time\ntime.sleep(1)", task)
        agent.op_submit(task, "slurm", {"cores": 1})
        agent.op_status(dict.fromkeys(tasks[:count]))
        polls += 1
    while time.monotonic() - start < 3.0:  # a waiting cell polls 10 times a second: double it
        seen |= {a["state"] for a in agent.op_status(dict.fromkeys(tasks)).values()}
        polls += 1
        time.sleep(0.05)
    queries, accounting = squeue_and_sacct_since(before)
    elapsed = time.monotonic() - start
    assert polls >= 40 and {"queued", "running"} <= seen  # 2 CPUs: four of six had to wait
    # One query per QUERY_INTERVAL for all six jobs, not one per job, per poll or per new job.
    assert 2 <= queries <= elapsed / agent_batch.QUERY_INTERVAL + 1
    assert accounting <= queries  # sacct only for jobs that left the queue, once per query
    wait_states(agent, tasks, {"completed"})
    before = slurm_rpc_counts()
    for _ in range(15):  # 1.5 s, past the cache: completed tasks ask the scheduler nothing
        agent.op_status(dict.fromkeys(tasks))
        time.sleep(0.1)
    assert squeue_and_sacct_since(before) == (0, 0)


def test_a_controller_that_does_not_answer_loses_no_job(agent: Agent, slurm: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """squeue failing (slurmctld restarting) says nothing about a job: it is asked again,
    never taken for gone, however old the job (LOST_GRACE 0 here)."""
    task = task_id(100)
    stage_batch_task(agent, "import time\nprint('up', flush=True)\ntime.sleep(120)", task)
    job_id = agent.op_submit(task, "slurm", {})["job_id"]
    wait_states(agent, [task], {"running"})
    monkeypatch.setattr(agent_batch, "LOST_GRACE", 0.0)
    # Stopping slurmctld can take less than the query interval: the answer must be a new query.
    agent.batch.interval = 0.0
    with slurm_daemon_stopped("slurmctld"):
        answer = agent.op_status({task: None})[task]
        assert answer["state"] == "running", answer
        queue_answer = agent.batch.queue_cache["slurm"][2][job_id]
        assert queue_answer.state == "" and "Unable to contact" in queue_answer.reason
    assert agent.op_status({task: None})[task]["state"] == "running"
    assert agent.op_kill([task]) == {task: "cancelling"}
    assert wait_states(agent, [task], {"cancelled", "failed", "lost"})[task]["state"] \
        == "cancelled"


def test_python_that_cannot_start_in_the_job_is_failed_with_its_exit_code(
        agent: Agent, slurm: Any) -> None:
    """The job script writes the exit-code file itself when Python never runs the task (here
    a `python:` path the compute node lacks): failed at once, with the shell's words."""
    task = task_id(200)
    stage_batch_task(agent, "pass", task)
    job_id = agent.op_submit(task, "slurm", {}, python="/nonexistent/bin/python3")["job_id"]
    answer = wait_states(agent, [task], {"completed", "failed", "cancelled", "timed_out",
                                         "lost"}, timeout=30)[task]
    assert answer["state"] == "failed" and answer["exitcode"] == 127
    assert "never started the task (exit code 127)" in answer["reason"]
    assert "/nonexistent/bin/python3: No such file or directory" in answer["reason"]
    record = sacct_fields(job_id)
    assert record["State"] == "FAILED" and record["ExitCode"] == "127:0"


def test_squeue_about_one_forgotten_job_is_an_answer(slurm: Any) -> None:
    """squeue exits 1 for a single id the controller does not know: the job has left the
    queue (for several ids it prints the known ones and exits 0)."""
    squeue = Slurm()
    done = subprocess.run(squeue.status_command(["99999999"]), capture_output=True, text=True)
    assert done.returncode == 1 and "Invalid job id" in done.stderr
    assert squeue.read_status(["99999999"], done.returncode, done.stdout, done.stderr) == {}


# ---------------------------------------------------------------- merge rules

def ended(agent: Agent, task: str, state: str, reason: str, seconds_ago: float) -> TaskPaths:
    paths = stage_batch_task(agent, "pass", task)
    set_state(paths, "submitted", when=time.time() - seconds_ago - 5, launcher="slurm",
              job_id="77")
    set_state(paths, "running", when=time.time() - seconds_ago - 1)
    write_json(paths.exitcode, -15)
    set_state(paths, state, reason, when=time.time() - seconds_ago)
    return paths


def test_a_signal_waits_for_the_schedulers_word(agent: Agent) -> None:
    """The runner saw SIGTERM; only SLURM knows whether that was the walltime. While the
    queue has forgotten the job and accounting lags, the task is still reported running."""
    paths = ended(agent, task_id(300), "failed", "killed by signal SIGTERM", seconds_ago=1)
    record = read_state(paths)
    assert agent.batch.merge(paths, record, None)["state"] == "running"
    assert agent.batch.merge(paths, record, unknown("squeue failed"))["state"] == "running"
    assert agent.batch.merge(paths, record, JobState("running", "COMPLETING"))["state"] == "running"
    assert not read_state(paths).get("checked")  # nothing settled yet
    settled = agent.batch.merge(paths, record, JobState("timed_out", "TIMEOUT (signal 15)"))
    assert (settled["state"], settled["checked"]) == ("timed_out", True)
    assert read_state(paths)["state"] == "timed_out"


def test_a_signal_without_the_schedulers_word_is_failed_after_the_wait(agent: Agent) -> None:
    paths = ended(agent, task_id(301), "failed", "killed by signal SIGTERM",
                  seconds_ago=VERDICT_WAIT + 1)
    settled = agent.batch.merge(paths, read_state(paths), None)
    assert (settled["state"], settled["reason"], settled["checked"]) == \
        ("failed", "killed by signal SIGTERM", True)
    assert settled["history"]["failed"] < time.time() - VERDICT_WAIT  # when it really ended


def test_cancel_by_the_scheduler_and_the_users_own(agent: Agent) -> None:
    by_admin = ended(agent, task_id(302), "failed", "killed by signal SIGTERM", seconds_ago=1)
    assert agent.batch.merge(by_admin, read_state(by_admin),
                        JobState("cancelled", "CANCELLED by 0"))["state"] == "cancelled"
    ours = ended(agent, task_id(303), "cancelled", "cancelled by the user", seconds_ago=1)
    ours.cancel.touch()
    settled = agent.batch.merge(ours, read_state(ours), JobState("cancelled", "CANCELLED by 0"))
    assert (settled["state"], settled["reason"]) == ("cancelled", "cancelled by the user")


def test_an_unanswered_query_never_makes_an_old_job_lost(agent: Agent) -> None:
    paths = stage_batch_task(agent, "pass", task_id(304))
    set_state(paths, "submitted", when=time.time() - 3600, launcher="slurm", job_id="78")
    set_state(paths, "running", when=time.time() - 3500)
    record = read_state(paths)
    assert agent.batch.merge(paths, record, unknown("squeue failed (1)")) is record
    assert agent.batch.merge(paths, record, JobState("", "a state we have no name for")) is record
    # The scheduler answered and knows nothing, and the files say nothing: now it is lost.
    assert agent.batch.merge(paths, record, None)["state"] == "lost"


def test_queued_with_the_pending_reason(agent: Agent) -> None:
    paths = stage_batch_task(agent, "pass", task_id(305))
    record = set_state(paths, "submitted", launcher="slurm", job_id="79")
    queued = agent.batch.merge(paths, record, JobState("queued", "Resources"))
    assert (queued["state"], queued["reason"]) == ("queued", "Resources")
    assert agent.batch.merge(paths, queued, JobState("queued", "Resources")) is queued  # no rewrite


def test_only_unconfirmed_outcomes_need_the_queue() -> None:
    job = {"launcher": "slurm", "job_id": "1"}
    assert _needs_queue({**job, "state": "running"})
    assert _needs_queue({**job, "state": "failed"})
    assert not _needs_queue({**job, "state": "failed", "checked": True})
    assert not _needs_queue({**job, "state": "completed"})  # nothing left to confirm
    assert not _needs_queue({"launcher": "process", "state": "running"})

