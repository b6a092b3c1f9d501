"""The agent's batch-job operations: submit a task as a job, and say how jobs are doing.

The task directory stays the truth about a task; the scheduler is asked only what the files
cannot say: whether a job still waits in the queue, and how a job ended when the task could not
write it down (a walltime kill, a cancellation, an out-of-memory kill). All jobs of a scheduler
are asked about in ONE command, at most once per QUERY_INTERVAL however often the kernel polls,
so a notebook with hundreds of queued tasks does not hammer the login node.

A running task whose heartbeat has been silent for STALE_HEARTBEAT may have lost its node,
which the queue may not notice for minutes: the scheduler must then vouch for the job (its
queue says it runs and, where the scheduler can ask, the node's own daemon answers for it), or
the task is `lost`, with what the scheduler said. A scheduler that cannot be asked at all is
waited for SCHEDULER_SILENCE longer. A job that the queue shows waiting again after its task
ran was requeued; that is said too, and the job itself refuses to run the cell again
(`schedulers/job.py`).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..wire.states import FINAL_STATES, State
from ..wire.taskdir import (
    HEARTBEAT_INTERVAL,
    TaskPaths,
    amend_state,
    read_exitcode,
    read_state,
    set_state,
    write_atomic,
)
from . import runner
from .queuecache import Answer, QueueCache
from .schedulers import BatchScheduler, JobState, scheduler_for
from .schedulers.base import Vouch, last_line, unknown

log = logging.getLogger(__name__)

QUERY_INTERVAL = 1.0  # seconds: the most often the queue is asked, per scheduler
COMMAND_TIMEOUT = 60.0
LOST_GRACE = 30.0  # a job may take this long to show up in the queue after submission
VERDICT_WAIT = 30.0  # how long a task killed by a signal waits for the scheduler to say why
# A running task silent this long (15 missed beats) is checked with the scheduler: long enough
# for a shared filesystem that stalls for a while, short enough to matter to someone waiting.
STALE_HEARTBEAT = 15 * HEARTBEAT_INTERVAL
SCHEDULER_SILENCE = 60.0  # ... and if the scheduler cannot be asked, lost this much later
PROBE_TIMEOUT = 30.0  # the longest a node probe may take (sstat waits ~10 s for a dead slurmd)
PROBE_INTERVAL = 10.0  # a node that answered for its job is asked again after this long
# Probes per poll, at most: when a shared filesystem stalls, every task goes silent at once,
# and hundreds of probes at a time would hammer the scheduler; the others wait their turn.
MAX_PROBES = 8
CLOCK_SKEW = 5.0  # seconds by which the clocks of the login and compute nodes may differ


class BatchOps:
    """The agent's batch-job operations: submit, settle states with the queue, cancel."""

    def __init__(self, paths: Callable[[str], TaskPaths],
                 shared: QueueCache | None = None) -> None:
        self.paths = paths  # a task's files, once its directory is known to be ours alone
        # the answers shared with the agents of the user's other kernels (queuecache.py)
        self.shared = shared
        self.interval = QUERY_INTERVAL  # seconds between queries: the host's scheduler_poll
        # Per scheduler: when it was last asked (monotonic), about which jobs, its answers,
        # and when (wall clock, to compare with the times in state records).
        self.queue_cache: dict[str, tuple[float, frozenset[str], dict[str, JobState],
                                          float]] = {}
        # Per (scheduler, job): when its node last answered a probe, and what it said.
        self.probe_cache: dict[tuple[str, str], tuple[float, Vouch]] = {}

    def op_submit(self, task: str, scheduler: str, resources: dict[str, Any], setup: str = "",
                  python: str | None = None, template: str | None = None) -> dict[str, Any]:
        """Write the task's job script and hand it to the scheduler."""
        paths = self.paths(task)
        if not paths.spec.exists():
            raise FileNotFoundError(f"task {task} is not staged (no spec in {paths.root})")
        if read_state(paths)["state"] != State.PREPARED:
            raise RuntimeError(f"task {task} was already started")
        batch = scheduler_for(scheduler)
        # The job's entry point runs the task at most once, however often the job starts.
        command = runtime_command(python, "remote_magic.host.schedulers.job", batch.name,
                                  str(paths.root))
        script = batch.render(template, resources, f"rm-{task[:12]}", str(paths.root),
                              setup, command)
        set_state(paths, State.SUBMITTED, launcher=scheduler)  # the job may start at once
        try:
            job_id = submit_job(batch, script, paths.job_script, paths.work, "the job")
        except BaseException:
            set_state(paths, State.PREPARED, launcher=None)
            raise
        amend_state(paths, "job_id", job_id=job_id)  # keeping what the job recorded since
        return {"job_id": job_id}

    def states(self, tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Settle the state records of batch tasks with what their schedulers say."""
        by_scheduler: dict[str, dict[str, str]] = {}
        for task_id, record in tasks.items():
            if _needs_queue(record):
                by_scheduler.setdefault(record["launcher"], {})[record["job_id"]] = task_id
        for name, jobs in by_scheduler.items():
            batch = scheduler_for(name)
            answers = self.ask(batch, sorted(jobs))
            asked_at = self.queue_cache[batch.name][3]
            silent = {job_id: age for job_id, task_id in jobs.items()
                      if (age := silence(self.paths(task_id), tasks[task_id])) is not None}
            vouches = self._probe(batch, {j: answers[j] for j in silent if j in answers
                                          and answers[j].state == State.RUNNING
                                          and not answers[j].unreachable})
            for job_id, task_id in jobs.items():
                paths = self.paths(task_id)
                if job_id in silent:
                    why = _doubt(batch, job_id, silent[job_id], answers.get(job_id),
                                 vouches.get(job_id))
                    if why is not None:
                        tasks[task_id] = _lose(batch, job_id, paths, why)
                        continue
                tasks[task_id] = self.merge(paths, tasks[task_id], answers.get(job_id),
                                             asked_at)
        return tasks

    def _probe(self, batch: BatchScheduler, jobs: dict[str, JobState]) -> dict[str, Vouch]:
        """Ask the nodes of these silent running jobs whether they still run them: one
        command per job, at most MAX_PROBES at once, none longer than PROBE_TIMEOUT. A node
        that answered is believed for PROBE_INTERVAL."""
        now = time.monotonic()
        found: dict[str, Vouch] = {}
        commands: dict[str, list[str]] = {}
        for job_id, job in jobs.items():
            cached = self.probe_cache.get((batch.name, job_id))
            if cached is not None and now - cached[0] < PROBE_INTERVAL:
                found[job_id] = cached[1]
                continue
            command = batch.probe_command(job_id, job)
            if command is not None and len(commands) < MAX_PROBES:
                commands[job_id] = command
        for job_id, done in _run_all(commands, PROBE_TIMEOUT).items():
            vouch = batch.read_probe(job_id, jobs[job_id], done.returncode, done.stdout,
                                     done.stderr)
            self.probe_cache[(batch.name, job_id)] = (time.monotonic(), vouch)
            found[job_id] = vouch
        return found

    def ask(self, batch: BatchScheduler, job_ids: list[str]) -> dict[str, JobState]:
        """What the scheduler says about these jobs: ONE status command (plus one accounting
        command for the jobs that left the queue), reused for `interval` (the host's
        scheduler_poll), by the agents of all the user's kernels (queuecache.py).

        A job left out is one the scheduler no longer knows; a job it could not be asked
        about (the command failed, or it was submitted after the last query) is `unknown`,
        never left out, so that a controller restart does not make every job look gone.
        """
        cache = self.queue_cache
        asked_at, asked_for, answers, _ = cache.get(batch.name, (0.0, frozenset(), {}, 0.0))
        later = unknown("not asked about yet")
        if time.monotonic() - asked_at < self.interval:
            # Jobs submitted since are asked about next time: while a notebook submits
            # hundreds of tasks, every poll has new ones, and must not cost a query each.
            return {**{j: later for j in job_ids if j not in asked_for}, **answers}
        if self.shared is None:
            return self._query(batch, job_ids)
        try:
            return self._ask_shared(batch, job_ids, self.shared)
        except OSError:  # the shared answer cannot be read or written: ask on our own
            return self._query(batch, job_ids)

    def ask_again(self, scheduler: str) -> None:
        """The next `ask` queries the scheduler (after a cancel, whose effect the user waits
        to see), whatever the interval: ours and the shared answer count as old."""
        self.queue_cache.pop(scheduler, None)
        if self.shared is None:
            return
        try:
            with self.shared.locked(scheduler) as last:
                if last.asked_at:
                    last.asked_at = 0.0
                    self.shared.save(scheduler, last)
        except OSError:
            pass

    def _ask_shared(self, batch: BatchScheduler, job_ids: list[str],
                    shared: QueueCache) -> dict[str, JobState]:
        """`ask`, with the answer the user's other kernels' agents share (queuecache.py)."""
        cache = self.queue_cache
        later = unknown("not asked about yet")
        with shared.locked(batch.name) as last:
            if last.age() < self.interval:  # another kernel's agent asked lately: its answer
                if not set(job_ids) <= last.wanted | last.asked_for:
                    last.wanted |= set(job_ids)
                    shared.save(batch.name, last)
                cache[batch.name] = (time.monotonic() - last.age(), frozenset(last.asked_for),
                                     last.jobs, last.asked_at)
                return {**{j: later for j in job_ids if j not in last.asked_for}, **last.jobs}
            wanted = sorted(last.still_wanted() | set(job_ids))
            answers = self._query(batch, wanted)
            asked = Answer(cache[batch.name][3], set(wanted), answers)
            asked.wanted = asked.still_wanted()  # (nothing added since: what stays queued)
            shared.save(batch.name, asked)
            return answers

    def _query(self, batch: BatchScheduler, job_ids: list[str]) -> dict[str, JobState]:
        """Ask the scheduler now (and accounting about the jobs the queue no longer lists)."""
        cache = self.queue_cache
        command = batch.status_command(job_ids)
        wall = time.time()
        queued = run_command(command)
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
                done = run_command(outcome)
                for job_id, job in batch.read_outcome(gone, done.returncode, done.stdout,
                                                      done.stderr).items():
                    # accounting adds detail to a final answer, never takes one back (it
                    # lags: it may still say RUNNING for a job the queue says ended)
                    if job.state in FINAL_STATES or job_id not in answers:
                        answers[job_id] = job
        cache[batch.name] = (time.monotonic(), frozenset(job_ids), answers, wall)
        return answers

    def merge(self, paths: TaskPaths, record: dict[str, Any], job: JobState | None,
               asked_at: float | None = None) -> dict[str, Any]:
        """The task's state from its files and the scheduler's word (None: it does not know
        the job; state "": it could not be asked), asked at `asked_at` (default: now)."""
        asked_at = time.time() if asked_at is None else asked_at
        if record["state"] in FINAL_STATES:
            return _confirm(paths, record, job, asked_at)
        code = read_exitcode(paths)
        if code is not None:  # the job's work is over: the files say how
            return _confirm(paths, _settle(paths, record, code), job, asked_at)
        if job is not None and job.state not in FINAL_STATES:
            # still in the queue, or the scheduler could not say: ask again later
            if job.state == State.QUEUED and record["state"] in (State.SUBMITTED, State.QUEUED):
                if record["state"] != State.QUEUED or record.get("reason") != job.reason:
                    return set_state(paths, State.QUEUED, job.reason)
            return record
        if job is not None:  # it ended without a word in its files: the scheduler says how
            if paths.cancel.exists() and job.state != State.COMPLETED:
                return set_state(paths, State.CANCELLED, "cancelled by the user", checked=True)
            return set_state(paths, job.state, job.reason, checked=True)
        submitted = record.get("history", {}).get(State.SUBMITTED, 0)
        if paths.cancel.exists() and State.RUNNING not in record.get("history", {}):
            # cancelled before it started, and forgotten since (a job array's element
            # cancelled while pending leaves no record of its own in SLURM's accounting)
            return set_state(paths, State.CANCELLED, "cancelled by the user", checked=True)
        if time.time() - submitted < LOST_GRACE:
            return record
        return set_state(paths, State.LOST, "the job left the queue and its task directory does "
                                        "not say how it ended", checked=True)

    def cancel(self, jobs: list[tuple[str, TaskPaths, dict[str, Any]]]) -> dict[str, str]:
        """Cancel the jobs of these tasks (task id, paths, state record): one cancel command
        per scheduler, however many jobs (the elements of a sweep's array)."""
        by_scheduler: dict[str, list[tuple[str, TaskPaths, dict[str, Any]]]] = {}
        for job in jobs:
            by_scheduler.setdefault(job[2]["launcher"], []).append(job)
        outcome = {}
        for name, group in by_scheduler.items():
            batch = scheduler_for(name)
            for _, paths, _ in group:
                paths.cancel.touch()
            command = batch.cancel_command([r["job_id"] for _, _, r in group])
            done = run_command(command)
            if done.returncode != 0:
                raise RuntimeError(f"{command[0]} failed: "
                                   f"{(done.stderr or done.stdout).strip()[-500:]}")
            self.ask_again(batch.name)
            outcome.update((task_id, "cancelling") for task_id, _, _ in group)
        return outcome


def _confirm(paths: TaskPaths, record: dict[str, Any], job: JobState | None,
             asked_at: float) -> dict[str, Any]:
    """A task whose files say it ended, given the scheduler's word on why where it has one.

    A kill from outside (walltime, scancel, memory) reaches the runner as a signal; only the
    scheduler can say which. Such a task is reported as still running until the scheduler
    says, for at most VERDICT_WAIT, then as the files have it. A queue that shows the job
    waiting again, asked after the task ended, means it was requeued: said at once.
    """
    state, reason = record["state"], record.get("reason")
    if state == State.COMPLETED or record.get("checked"):
        return record
    ended = record.get("history", {}).get(state, 0)
    if job is not None and job.state == State.QUEUED and asked_at > ended + CLOCK_SKEW:
        note = _requeued(record, job) + _cancel(scheduler_for(record["launcher"]),
                                                record["job_id"])
        return set_state(paths, state, f"{reason or state}; then {note}", when=ended or None,
                         checked=True)
    if job is not None and job.state in (State.TIMED_OUT, State.CANCELLED) and \
            not paths.cancel.exists():
        return set_state(paths, job.state, job.reason, checked=True)
    if job is not None and job.state == State.FAILED and job.reason:
        return set_state(paths, State.FAILED, f"{job.reason}; {reason}", checked=True)
    if job is not None and job.state in FINAL_STATES:
        return _checked(paths, record)
    # The scheduler no longer knows the job, could not be asked, or still lists it.
    if (reason or "").startswith("killed by signal"):
        if time.time() - record.get("history", {}).get(state, 0) < VERDICT_WAIT:
            return {**record, "state": State.RUNNING}
        return _checked(paths, record)
    return _checked(paths, record) if job is None else record


def _checked(paths: TaskPaths, record: dict[str, Any]) -> dict[str, Any]:
    """Keep the files' outcome (and when it was recorded); the scheduler has nothing to add."""
    state = record["state"]
    return set_state(paths, state, record.get("reason"), when=record.get("history", {}).get(state),
                     checked=True)


def _settle(paths: TaskPaths, record: dict[str, Any], code: int) -> dict[str, Any]:
    """The outcome of a job whose exit-code file exists but whose runner recorded none."""
    if code != 0 and State.RUNNING not in record.get("history", {}) and not paths.cancel.exists():
        # The job script wrote the code: Python died before the runner started (a `python`
        # missing on the compute node, a broken environment). Its own words are in job.err.
        try:
            words = last_line(paths.job_err.read_text(errors="replace"))
        except FileNotFoundError:
            words = "no job.err"
        return set_state(paths, State.FAILED, f"the job's Python never started the task (exit "
                                          f"code {code}): {words}", exitcode=code)
    return runner.settle(paths, code)


def _needs_queue(record: dict[str, Any]) -> bool:
    """Only the scheduler can add to these: unfinished tasks, and outcomes not yet confirmed
    (a completed task has nothing to confirm)."""
    if record.get("launcher") in (None, "process") or not record.get("job_id"):
        return False
    if record["state"] == State.COMPLETED:
        return False
    return record["state"] not in FINAL_STATES or not record.get("checked")


def silence(paths: TaskPaths, record: dict[str, Any]) -> float | None:
    """How long a running task has not been heard from, once that is over STALE_HEARTBEAT;
    None while it beats, and for tasks not running or whose exit-code file exists."""
    if record["state"] != State.RUNNING or paths.exitcode.exists():
        return None
    try:
        beat = paths.heartbeat.stat().st_mtime
    except FileNotFoundError:
        beat = 0.0
    age = time.time() - max(beat, record.get("history", {}).get(State.RUNNING, 0.0))
    return age if age > STALE_HEARTBEAT else None


def _doubt(batch: BatchScheduler, job_id: str, age: float, job: JobState | None,
           vouch: Vouch | None) -> str | None:
    """Why a silent running task is lost, or None while the scheduler vouches for its job
    (or has the last word anyway: a job gone from the queue, or ended, is settled as usual)."""
    silent = f"no heartbeat for {age:.0f} s"
    if job is None or job.state in FINAL_STATES:
        return None
    if job.state == State.QUEUED:
        return f"{silent}, and {_requeued({'launcher': batch.name, 'job_id': job_id}, job)}"
    if job.state == "" or (vouch is not None and vouch.alive is None):
        if age < STALE_HEARTBEAT + SCHEDULER_SILENCE:
            return None
        words = job.reason if job.state == "" else vouch.reason if vouch else ""
        return f"{silent}, and {batch.title} could not be asked about job {job_id}: {words}"
    if job.unreachable:
        return f"{silent}, and {batch.title} has lost contact with the job's host ({job.reason})"
    if vouch is not None and vouch.alive is False:
        return f"{silent}, and {vouch.reason}"
    return None


def _lose(batch: BatchScheduler, job_id: str, paths: TaskPaths, why: str) -> dict[str, Any]:
    """Record `lost`, unless the task spoke up since it was read (it may have just ended), and
    cancel the job: its allocation is of no use now, and a cancelled job cannot be requeued
    (a site policy, or the node coming back) to run the cell again behind the user's back."""
    record = read_state(paths)
    if record["state"] != State.RUNNING or paths.exitcode.exists():
        return record
    return set_state(paths, State.LOST, why + _cancel(batch, job_id), checked=True)


def _cancel(batch: BatchScheduler, job_id: str) -> str:
    """Cancel a job that must not run (again); what to add to the task's reason."""
    done = run_command(batch.cancel_command([job_id]), timeout=PROBE_TIMEOUT)
    if done.returncode == 0:
        return f"; job {job_id} was cancelled, so that it cannot run the cell later"
    return (f"; cancelling job {job_id} failed ({last_line(done.stderr or done.stdout)}), "
            "but should it start again it will not run the cell")


def _requeued(record: dict[str, Any], job: JobState) -> str:
    title = scheduler_for(record["launcher"]).title
    return (f"{title} has put job {record['job_id']} back in the queue "
            f"({job.reason or 'queued'}) after it had started: it was requeued")


def runtime_command(python: str | None, module: str, *args: str) -> str:
    """The shell command that runs one of our modules in a job, from this runtime."""
    runtime = str(Path(runner.__file__).resolve().parent.parent)
    return (f"PYTHONPATH={shlex.quote(runtime)}${{PYTHONPATH:+:$PYTHONPATH}} "
            f"{shlex.quote(python or sys.executable)} -m {module} "
            + " ".join(shlex.quote(a) for a in args))


def submit_job(batch: BatchScheduler, script: str, script_path: Path, cwd: Path,
               what: str) -> str:
    """Write the job script and submit it; the job id, or why the scheduler refused `what`."""
    write_atomic(script_path, script, mode=0o700)
    done = run_command(batch.submit_command(str(script_path)), cwd=cwd)
    if done.returncode != 0:
        raise RuntimeError(f"{batch.submit_command(str(script_path))[0]} refused {what}: "
                           f"{(done.stderr or done.stdout).strip()[-800:]}")
    return batch.job_id(done.stdout)


def run_command(argv: list[str], cwd: Path | None = None,
         timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL,
                              env=dict(os.environ))
        log.debug("%s -> %d: %s", " ".join(argv), done.returncode,
                  (done.stdout + done.stderr).strip()[-500:])
        return done
    except FileNotFoundError:
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"{argv[0]} took over "
                                                          f"{timeout:.0f} s")


def _run_all(commands: dict[str, list[str]],
             timeout: float) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run commands side by side (no threads: the agent forks), each cut off after
    `timeout`; a command that timed out gives 124, one that is missing 127, as in `_run`."""
    started: dict[str, subprocess.Popen[str]] = {}
    done: dict[str, subprocess.CompletedProcess[str]] = {}
    for key, argv in commands.items():
        try:
            started[key] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)
        except FileNotFoundError:
            done[key] = subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: command not found")
    deadline = time.monotonic() + timeout
    for key, process in started.items():
        try:
            out, err = process.communicate(timeout=max(0.0, deadline - time.monotonic()))
            done[key] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            done[key] = subprocess.CompletedProcess(process.args, 124, "", f"{commands[key][0]} "
                                                    f"took over {timeout:.0f} s")
    return done
