"""What a batch job runs: the task's runner, at most once per task directory.

Jobs are submitted as not to be requeued, yet a scheduler may start one again all the same (a
site policy, an administrator's requeue, a node coming back). A cell must not run twice behind
the user's back: it may have written files, sent messages or spent hours. So before it runs
anything the job claims the task directory by creating `job.started` (O_EXCL: of two starts,
exactly one creates it). A later start finds it, or a state record that says the task already
ran, runs nothing, and writes why into the task's state, where the kernel shows it.

`python -m remote_magic.host.schedulers.job SCHEDULER TASKDIR` is the `{runner}` of every job
script; `... SCHEDULER --array FOLDER [--walltime SECONDS]` that of a sweep's job array.

An element of a job array, once its own task has run, takes over elements whose array tasks
have not started yet (the last ones first), runs them in turn, and cancels their array tasks:
on most clusters starting a job costs far more than a short element (about half a second of
each core here, minutes of queue elsewhere), and a sweep's elements all ask for the same
resources. It takes one over only while the job's time left is ample for it (three times the
longest element it ran, and a minute more), so a walltime fits a single element as it says.
A taken-over element records which job runs it (its `job_id`), so that it is followed, and
cancelled, as part of that job; its own array task, should it start all the same, finds its
claim and leaves quietly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

from ...wire.states import FINAL_STATES, State
from ...wire.taskdir import (
    TaskPaths,
    read_exitcode,
    read_json,
    read_state,
    set_state,
    write_atomic,
)
from .. import runner
from . import BatchScheduler, scheduler_for

STARTING = 60.0  # seconds a claim may stand before its start has set the task running


def run_once(root: str, scheduler: str) -> int:
    """Run the task unless a job has started it before; the job's exit code."""
    paths = TaskPaths(root)
    batch = scheduler_for(scheduler)
    this = _this_start(batch)
    if not _claim(paths, this):
        first = read_json(paths.job_claim) or {}
        if first.get("taken_by"):  # another element of the array runs it: nothing to say
            return 0
        return refuse(paths, batch, first, this)
    record = read_state(paths)
    if State.RUNNING in record.get("history", {}) or record["state"] in FINAL_STATES:
        # ran before, without leaving a claim (started by an older runtime, or a claim
        # removed by hand): the state record is enough to say no
        return refuse(paths, batch, {}, this)
    return batch.job_exit_code(runner.supervise(str(paths.root)))


ASSUMED_WALLTIME = 1800.0  # seconds a job without a walltime of ours is taken to have
TAKE_MARGIN = 60.0  # seconds of the job's time left over after a taken-over element
LET_GO = ".let-go"  # an array folder's folder for the entries of taken-over elements


def run_array(folder: str, scheduler: str, walltime: float | None) -> int:
    """Run this array task's element, then take over elements not started yet (see the
    module's docstring); the exit code of this task's own element."""
    began = time.monotonic()
    batch = scheduler_for(scheduler)
    index = os.environ.get(batch.array_variable, "")
    if not index.isdigit():
        print(f"remote_magic: not run as an element of a job array (no index in "
              f"${batch.array_variable})", file=sys.stderr)
        return 2
    own = TaskPaths(os.path.realpath(os.path.join(folder, index)))
    code = run_once(str(own.root), scheduler)
    if (read_json(own.job_claim) or {}).get("taken_by"):
        # Another array task runs this element: the job script must not write its exit code
        # when this process returns (that would end the element while it runs elsewhere).
        _let_go(folder, index)
    longest = time.monotonic() - began
    array = os.environ.get(batch.array_job_variable, "")
    me = batch.element_id(array, int(index)) if array else None
    limit = walltime or ASSUMED_WALLTIME
    for number, paths in _not_started(folder, batch):
        if limit - (time.monotonic() - began) < 3 * longest + TAKE_MARGIN:
            break
        this = {**_this_start(batch), "taken_by": me}
        if not _claim(paths, this):
            continue  # its own task, or another one, started it meanwhile
        record = read_state(paths)
        set_state(paths, record["state"], record.get("reason"),
                  when=record.get("history", {}).get(record["state"]), job_id=me)
        if array:  # its own array task need not start: cancel it (it would leave at once)
            _quietly(batch.cancel_command([batch.element_id(array, number)]))
        start = time.monotonic()
        os.environ[batch.array_variable] = str(number)  # the cell sees its own index
        try:
            done = batch.job_exit_code(runner.supervise(str(paths.root)))
        finally:
            os.environ[batch.array_variable] = index
        if read_exitcode(paths) is None:  # the job script writes its own element's only
            write_atomic(paths.exitcode, f"{done}\n")
        longest = max(longest, time.monotonic() - start)
    return code


def _not_started(folder: str, batch: BatchScheduler) -> Any:
    """The array's elements (index, paths) that no job has started, the last first: array
    tasks start in order, so taking from the end meets them least."""
    numbers = sorted((int(e.name) for e in os.scandir(folder) if e.name.isdigit()),
                     reverse=True)
    for number in numbers:
        paths = TaskPaths(os.path.realpath(os.path.join(folder, str(number))))
        if paths.spec.exists() and not paths.job_claim.exists() and not paths.cancel.exists():
            yield number, paths


def _let_go(folder: str, index: str) -> None:
    """Point this array task's entry at an empty folder of its own (atomically), so that what
    its job script writes after this process (the exit code) lands there."""
    spare = os.path.join(folder, LET_GO, index)
    os.makedirs(spare, mode=0o700, exist_ok=True)
    link = os.path.join(folder, f".{index}.{os.getpid()}")
    os.symlink(spare, link)
    os.replace(link, os.path.join(folder, index))


def _quietly(argv: list[str]) -> None:
    try:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pass  # then its task starts, finds the claim, and leaves


def refuse(paths: TaskPaths, batch: BatchScheduler, first: dict[str, Any],
           this: dict[str, Any]) -> int:
    """Record a start that must not run the cell; 0, so that no requeue-on-failure policy
    starts the job yet again."""
    record = read_state(paths)
    why = _why(batch, first, this, record)
    starts = [*record.get("refused_starts", []), this]
    state = record["state"]
    if state in FINAL_STATES:  # the first run's outcome stands; say what happened since
        reason = f"{record['reason']}; then {why}" if record.get("reason") else why
        set_state(paths, state, reason, when=record.get("history", {}).get(state),
                  refused_starts=starts)
    elif State.RUNNING not in record.get("history", {}) and \
            time.time() - first.get("time", time.time()) < STARTING:
        # Two starts at once: the first claimed the task a moment ago and is starting it
        # still (its claim may not even be written yet). Calling it lost would make that
        # start refuse too, and nobody would run the cell.
        set_state(paths, state, record.get("reason"),
                  when=record.get("history", {}).get(state), refused_starts=starts)
    else:
        set_state(paths, State.LOST, "its first run left no outcome (its node failed, or it was "
                                 f"killed with it); {why}", checked=True, refused_starts=starts)
    print(f"remote_magic: {why}", file=sys.stderr, flush=True)
    return 0


def _why(batch: BatchScheduler, first: dict[str, Any], this: dict[str, Any],
         record: dict[str, Any]) -> str:
    job = f"job {this['job_id']}" if this.get("job_id") else "the job"
    restarts = f" ({batch.restart_variable}={this['restarts']})" if this.get("restarts") else ""
    began = first.get("time") or record.get("history", {}).get(State.RUNNING)
    where = f" on {first['host']}" if first.get("host") else ""
    earlier = f", after its first start{where} at {_clock(began)}" if began else ""
    return (f"{batch.title} started {job} again{restarts} on {this['host']} at "
            f"{_clock(this['time'])}{earlier}; a task runs at most once, so the cell was not "
            "run again (run it anew with --rerun)")


def _this_start(batch: BatchScheduler) -> dict[str, Any]:
    restarts = os.environ.get(batch.restart_variable) if batch.restart_variable else None
    return {"time": time.time(), "host": socket.gethostname(),
            "job_id": os.environ.get(batch.job_id_variable) or None,
            "restarts": restarts if restarts not in (None, "", "0") else None}


def _claim(paths: TaskPaths, this: dict[str, Any]) -> bool:
    """Create the claim file; False if a start before this one created it."""
    try:
        fd = os.open(paths.job_claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(this, f)
    return True


def _clock(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) in (3, 5) and args[1] == "--array":  # an element of a job array
        walltime = float(args[4]) if len(args) == 5 and args[3] == "--walltime" else None
        return run_array(args[2], args[0], walltime)
    if len(args) != 2:
        print("usage: python -m remote_magic.host.schedulers.job SCHEDULER TASKDIR\n"
              "       python -m remote_magic.host.schedulers.job SCHEDULER --array FOLDER "
              "[--walltime SECONDS]", file=sys.stderr)
        return 2
    return run_once(os.path.abspath(args[1]), args[0])


if __name__ == "__main__":
    sys.exit(main())
