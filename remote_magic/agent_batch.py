"""The agent's batch-job operations: submit a task as a job, and say how jobs are doing.

The task directory stays the truth about a task; the scheduler is asked only what the files
cannot say: whether a job still waits in the queue, and how a job ended when the task could not
write it down (a walltime kill, a cancellation, an out-of-memory kill). All jobs of a scheduler
are asked about in ONE command, at most once per QUERY_INTERVAL however often the kernel polls,
so a notebook with hundreds of queued tasks does not hammer the login node.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from . import runner
from .schedulers import BatchScheduler, JobState, scheduler_for
from .schedulers.base import last_line, unknown
from .taskdir import FINAL_STATES, TaskPaths, read_exitcode, read_state, set_state, write_atomic

QUERY_INTERVAL = 1.0  # seconds: the most often the queue is asked, per scheduler
COMMAND_TIMEOUT = 60.0
LOST_GRACE = 30.0  # a job may take this long to show up in the queue after submission
VERDICT_WAIT = 30.0  # how long a task killed by a signal waits for the scheduler to say why


class BatchOps:
    """Mixed into the Agent."""

    paths: Callable[[str], TaskPaths]

    def _batch_cache(self) -> dict[str, tuple[float, frozenset[str], dict[str, JobState]]]:
        if not hasattr(self, "_queue_cache"):
            self._queue_cache: dict[str, tuple[float, frozenset[str], dict[str, JobState]]] = {}
        return self._queue_cache

    def op_submit(self, task: str, scheduler: str, resources: dict[str, Any], setup: str = "",
                  python: str | None = None, template: str | None = None) -> dict[str, Any]:
        """Write the task's job script and hand it to the scheduler."""
        paths = self.paths(task)
        if not paths.spec.exists():
            raise FileNotFoundError(f"task {task} is not staged (no spec in {paths.root})")
        if read_state(paths)["state"] != "prepared":
            raise RuntimeError(f"task {task} was already started")
        batch = scheduler_for(scheduler)
        runtime = str(Path(runner.__file__).resolve().parent.parent)
        command = (f"PYTHONPATH={shlex.quote(runtime)}${{PYTHONPATH:+:$PYTHONPATH}} "
                   f"{shlex.quote(python or sys.executable)} -m remote_magic.runner "
                   f"{shlex.quote(str(paths.root))}")
        script = batch.render(template, resources, f"rm-{task[:12]}", str(paths.root),
                              setup, command)
        job_script = paths.job_script
        write_atomic(job_script, script, mode=0o700)
        done = _run(batch.submit_command(str(job_script)), cwd=paths.work)
        if done.returncode != 0:
            raise RuntimeError(f"{batch.submit_command(str(job_script))[0]} refused the job: "
                               f"{(done.stderr or done.stdout).strip()[-800:]}")
        job_id = batch.job_id(done.stdout)
        set_state(paths, "submitted", launcher=scheduler, job_id=job_id)
        return {"job_id": job_id}

    def batch_states(self, tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Settle the state records of batch tasks with what their schedulers say."""
        by_scheduler: dict[str, dict[str, str]] = {}
        for task_id, record in tasks.items():
            if _needs_queue(record):
                by_scheduler.setdefault(record["launcher"], {})[record["job_id"]] = task_id
        for name, jobs in by_scheduler.items():
            batch = scheduler_for(name)
            answers = self._ask(batch, sorted(jobs))
            for job_id, task_id in jobs.items():
                tasks[task_id] = self._merge(self.paths(task_id), tasks[task_id],
                                             answers.get(job_id))
        return tasks

    def _ask(self, batch: BatchScheduler, job_ids: list[str]) -> dict[str, JobState]:
        """What the scheduler says about these jobs: ONE status command (plus one accounting
        command for the jobs that left the queue), reused for QUERY_INTERVAL.

        A job left out is one the scheduler no longer knows; a job it could not be asked
        about (the command failed, or it was submitted after the last query) is `unknown`,
        never left out, so that a controller restart does not make every job look gone.
        """
        cache = self._batch_cache()
        asked_at, asked_for, answers = cache.get(batch.name, (0.0, frozenset(), {}))
        if time.monotonic() - asked_at < QUERY_INTERVAL:
            # Jobs submitted since are asked about next time: while a notebook submits
            # hundreds of tasks, every poll has new ones, and must not cost a query each.
            later = unknown("not asked about yet")
            return {**{j: later for j in job_ids if j not in asked_for}, **answers}
        command = batch.status_command(job_ids)
        queued = _run(command)
        listed = batch.read_status(job_ids, queued.returncode, queued.stdout, queued.stderr)
        if listed is None:
            why = unknown(f"{command[0]} failed ({queued.returncode}): "
                          f"{last_line(queued.stderr or queued.stdout)}")
            answers = dict.fromkeys(job_ids, why)
        else:
            answers = listed
            gone = [j for j in job_ids if j not in answers or answers[j].state in FINAL_STATES]
            outcome = batch.outcome_command(gone) if gone else None
            if outcome is not None:
                done = _run(outcome)
                for job_id, job in batch.read_outcome(gone, done.returncode, done.stdout,
                                                      done.stderr).items():
                    # accounting adds detail to a final answer, never takes one back (it
                    # lags: it may still say RUNNING for a job the queue says ended)
                    if job.state in FINAL_STATES or job_id not in answers:
                        answers[job_id] = job
        cache[batch.name] = (time.monotonic(), frozenset(job_ids), answers)
        return answers

    def _merge(self, paths: TaskPaths, record: dict[str, Any],
               job: JobState | None) -> dict[str, Any]:
        """The task's state from its files and the scheduler's word (None: it does not know
        the job; state "": it could not be asked)."""
        if record["state"] in FINAL_STATES:
            return _confirm(paths, record, job)
        code = read_exitcode(paths)
        if code is not None:  # the job's work is over: the files say how
            return _confirm(paths, _settle(paths, record, code), job)
        if job is not None and job.state not in FINAL_STATES:
            # still in the queue, or the scheduler could not say: ask again later
            if job.state == "queued" and record["state"] in ("submitted", "queued"):
                if record["state"] != "queued" or record.get("reason") != job.reason:
                    return set_state(paths, "queued", job.reason)
            return record
        if job is not None:  # it ended without a word in its files: the scheduler says how
            if paths.cancel.exists() and job.state != "completed":
                return set_state(paths, "cancelled", "cancelled by the user", checked=True)
            return set_state(paths, job.state, job.reason, checked=True)
        submitted = record.get("history", {}).get("submitted", 0)
        if time.time() - submitted < LOST_GRACE:
            return record
        return set_state(paths, "lost", "the job left the queue and its task directory does "
                                        "not say how it ended", checked=True)

    def batch_cancel(self, paths: TaskPaths, record: dict[str, Any]) -> str:
        batch = scheduler_for(record["launcher"])
        paths.cancel.touch()
        done = _run(batch.cancel_command([record["job_id"]]))
        if done.returncode != 0:
            raise RuntimeError(f"{batch.cancel_command([])[0]} failed: "
                               f"{(done.stderr or done.stdout).strip()[-500:]}")
        self._batch_cache().pop(batch.name, None)
        return "cancelling"


def _confirm(paths: TaskPaths, record: dict[str, Any], job: JobState | None) -> dict[str, Any]:
    """A task whose files say it ended, given the scheduler's word on why where it has one.

    A kill from outside (walltime, scancel, memory) reaches the runner as a signal; only the
    scheduler can say which. Such a task is reported as still running until the scheduler
    says, for at most VERDICT_WAIT, then as the files have it.
    """
    state, reason = record["state"], record.get("reason")
    if state == "completed" or record.get("checked"):
        return record
    if job is not None and job.state in ("timed_out", "cancelled") and \
            not paths.cancel.exists():
        return set_state(paths, job.state, job.reason, checked=True)
    if job is not None and job.state == "failed" and job.reason:
        return set_state(paths, "failed", f"{job.reason}; {reason}", checked=True)
    if job is not None and job.state in FINAL_STATES:
        return _checked(paths, record)
    # The scheduler no longer knows the job, could not be asked, or still lists it.
    if (reason or "").startswith("killed by signal"):
        if time.time() - record.get("history", {}).get(state, 0) < VERDICT_WAIT:
            return {**record, "state": "running"}
        return _checked(paths, record)
    return _checked(paths, record) if job is None else record


def _checked(paths: TaskPaths, record: dict[str, Any]) -> dict[str, Any]:
    """Keep the files' outcome (and when it was recorded); the scheduler has nothing to add."""
    state = record["state"]
    return set_state(paths, state, record.get("reason"), when=record.get("history", {}).get(state),
                     checked=True)


def _settle(paths: TaskPaths, record: dict[str, Any], code: int) -> dict[str, Any]:
    """The outcome of a job whose exit-code file exists but whose runner recorded none."""
    if code != 0 and "running" not in record.get("history", {}) and not paths.cancel.exists():
        # The job script wrote the code: Python died before the runner started (a `python`
        # missing on the compute node, a broken environment). Its own words are in job.err.
        try:
            words = last_line(paths.job_err.read_text(errors="replace"))
        except FileNotFoundError:
            words = "no job.err"
        return set_state(paths, "failed", f"the job's Python never started the task (exit "
                                          f"code {code}): {words}", exitcode=code)
    return runner.settle(paths, code)


def _needs_queue(record: dict[str, Any]) -> bool:
    """Only the scheduler can add to these: unfinished tasks, and outcomes not yet confirmed
    (a completed task has nothing to confirm)."""
    if record.get("launcher") in (None, "process") or not record.get("job_id"):
        return False
    if record["state"] == "completed":
        return False
    return record["state"] not in FINAL_STATES or not record.get("checked")


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL,
                              env=dict(os.environ))
    except FileNotFoundError:
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"{argv[0]} took over "
                                                          f"{COMMAND_TIMEOUT:.0f} s")
