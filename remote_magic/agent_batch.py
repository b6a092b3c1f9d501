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
from .taskdir import FINAL_STATES, TaskPaths, read_exitcode, read_state, set_state, write_atomic

QUERY_INTERVAL = 1.0  # seconds: the most often the queue is asked, per scheduler
COMMAND_TIMEOUT = 60.0
LOST_GRACE = 30.0  # a job may take this long to show up in the queue after submission


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
        job_script = paths.root / "job.sh"
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
        cache = self._batch_cache()
        asked_at, asked_for, answers = cache.get(batch.name, (0.0, frozenset(), {}))
        if time.monotonic() - asked_at < QUERY_INTERVAL and asked_for >= set(job_ids):
            return answers
        answers = {}
        queued = _run(batch.status_command(job_ids))
        if queued.returncode == 0:
            answers = batch.parse_status(queued.stdout)
        gone = [j for j in job_ids if j not in answers or answers[j].state in FINAL_STATES]
        outcome = batch.outcome_command(gone) if gone else None
        if outcome is not None:
            finished = _run(outcome)
            if finished.returncode == 0:  # e.g. accounting disabled: the files must say
                answers.update({k: v for k, v in batch.parse_outcome(finished.stdout).items()
                                if v.state})
        cache[batch.name] = (time.monotonic(), frozenset(job_ids), answers)
        return answers

    def _merge(self, paths: TaskPaths, record: dict[str, Any],
               job: JobState | None) -> dict[str, Any]:
        state = record["state"]
        if state in FINAL_STATES:
            if state == "completed" or record.get("checked"):
                return record
            # The runner wrote its outcome. A kill from outside (walltime, cancel, memory)
            # needs the scheduler's word on why, so such a task is not reported as ended
            # until the scheduler gives it.
            if job is not None and job.state in ("timed_out", "cancelled") and \
                    not paths.cancel.exists():
                return set_state(paths, job.state, job.reason, checked=True)
            if job is not None and job.state == "failed" and job.reason:
                return set_state(paths, "failed", f"{job.reason}; {record.get('reason')}",
                                 checked=True)
            if job is None or job.state in FINAL_STATES:
                return set_state(paths, state, record.get("reason"), checked=True)
            if (record.get("reason") or "").startswith("killed by signal"):
                return {**record, "state": "running"}  # the scheduler has not said why yet
            return record
        if job is not None and job.state not in FINAL_STATES and job.state:
            if job.state == "queued" and state in ("submitted", "queued"):
                if state != "queued" or record.get("reason") != job.reason:
                    return set_state(paths, "queued", job.reason)
            return record
        # The job has left the queue: the files say how it ended, else the scheduler does.
        code = read_exitcode(paths)
        if code is not None:
            record = runner.settle(paths, code)
            return self._merge(paths, record, job) if record["state"] in FINAL_STATES else record
        if job is not None and job.state in FINAL_STATES:
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


def _needs_queue(record: dict[str, Any]) -> bool:
    if record.get("launcher") in (None, "process") or not record.get("job_id"):
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
