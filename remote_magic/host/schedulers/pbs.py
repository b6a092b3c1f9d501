"""PBS Professional and OpenPBS: job scripts, qsub/qstat/qdel, and reading `qstat -F json`.

Why these commands:

* Status is one `qstat -f -F json -x <ids...>` call. `-x` includes finished ("history") jobs,
  so the same answer says how a job ended (`job_state` F with `Exit_status`) for as long as the
  server keeps history (`job_history_enable`, `job_history_duration`, two weeks by default).
  Without `-x`, qstat refuses a finished id ("Job has finished, use -x or -H ...", exit 35), as
  Parsl found out on Polaris. A job the server has purged is simply absent from the answer
  (qstat prints "Unknown Job Id" on stderr); asking again cannot bring it back, so there is no
  separate outcome command: the job script's exit-code file is the record of last resort.
* qsub takes the script path as an argument and reads its `#PBS` lines itself, so submission
  needs no shell.

How a finished job (state F) is read, in this order:

1. `Exit_status` -29 (`JOB_EXEC_KILL_WALLTIME` in OpenPBS' job.h) -> timed_out.
2. Substate 91 (`JOB_SUBSTATE_TERMINATED`) or a comment ending in "and terminated" -> cancelled:
   this is what qdel leaves behind, for running and for queued jobs alike. The Exit_status of a
   job deleted while running is just the signal that killed it (265 = 256 + SIGKILL was seen at
   ALCF), so it cannot tell a qdel from any other kill.
3. `Exit_status` 0 -> completed.
4. Killed by a signal (Exit_status >= 256) after using at least its walltime -> timed_out: PBS
   versions without code -29 report a walltime kill only as the signal.
5. Anything else -> failed, with the reason spelled out (JOB_EXEC_* name, signal, comment).

Jobs are submitted with `-r n` (not rerunnable): PBS runs a rerunnable job again when its node
fails (once the server gives up on the node, `node_fail_requeue`) or on `qrerun`, and a cell
must not run twice. There is no probe of a node: a running job whose heartbeat stopped is
judged by qstat alone.

Resource semantics, shared with the other schedulers: `cores`, `mem` and `gpus` are per node
and `nodes` is the number of nodes; one PBS chunk is one node, and several nodes get
`place=scatter` so the chunks really land on different hosts. Memory sizes are binary (1G =
1024M), as PBS's own `kb`/`mb`/`gb` are.

Job arrays (OpenPBS `qsub(1B)`, `qstat(1B)` and sources, which PBS Professional shares):

* `-J 0-N` makes the job an array, `-J 0-N%K` lets at most K subjobs run at once (the
  `max_run_subjobs` limit, in OpenPBS since 22.05: older versions refuse the "%", so a limit
  is only written when the caller asks for one). qsub prints "1234[].server".
  Subjob i is "1234[i].server", finds its index in PBS_ARRAY_INDEX, and `^array_index^` in its
  -o/-e paths becomes i (the server's `subst_array_index`).
* qsub refuses `-r n` on an array ("cannot submit non-rerunable Array Job": job arrays are
  always rerunnable), so an array's script goes without it. A subjob PBS starts again finds its
  task already claimed, and runs nothing (`schedulers/job.py`).
* Status asks for the array once, `qstat -t` listing its subjobs. Subjobs still queued are not
  sent by the server itself (since OpenPBS 22.05, only the array's `array_indices_remaining`);
  qstat makes one entry per index, and so does the parser where an entry is missing.
* A finished subjob the server no longer holds (or never made: deleted while queued) is shown
  from its array's record with the comment "Subjob finished", whatever its exit status: it is
  read as over without a reason, so the task's own files, or the user's cancel, say how.
* `qdel 1234[4].server` deletes one subjob; the array's own id deletes all of them.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, ClassVar

from ...wire.states import State
from .base import Array, BatchScheduler, JobState
from .units import (
    extract_json,
    index_list,
    memory_bytes,
    positive_count,
    queue_lines,
    walltime_seconds,
)

# --------------------------------------------------------------------------------------------
# Reading qstat's answer

# Negative Exit_status values: PBS's own reasons for ending a job (OpenPBS src/include/job.h).
_JOB_EXEC = {
    -1: "JOB_EXEC_FAIL1: job exec failed, before files, no retry",
    -2: "JOB_EXEC_FAIL2: job exec failed, after files, no retry",
    -3: "JOB_EXEC_RETRY: job exec failed, do retry",
    -4: "JOB_EXEC_INITABT: job aborted on MOM initialization",
    -5: "JOB_EXEC_INITRST: job aborted on MOM init, checkpoint, no migrate",
    -6: "JOB_EXEC_INITRMG: job aborted on MOM init, checkpoint, ok migrate",
    -7: "JOB_EXEC_BADRESRT: job restart failed",
    -10: "JOB_EXEC_FAILUID: invalid uid/gid for job",
    -11: "JOB_EXEC_RERUN: job rerun",
    -12: "JOB_EXEC_CHKP: job was checkpointed and killed",
    -13: "JOB_EXEC_FAIL_PASSWORD: job failed due to a bad password",
    -14: "JOB_EXEC_RERUN_SIS_FAIL: job rerun",
    -15: "JOB_EXEC_QUERST: requeue job for restart from checkpoint",
    -16: "JOB_EXEC_FAILHOOK_RERUN: a hook rejected the job, requeued",
    -17: "JOB_EXEC_FAILHOOK_DELETE: a hook rejected the job, deleted",
    -18: "JOB_EXEC_HOOK_RERUN: a hook requested the job be requeued",
    -19: "JOB_EXEC_HOOK_DELETE: a hook requested the job be deleted",
    -20: "JOB_EXEC_RERUN_MS_FAIL: mother superior connection failed",
    -21: "JOB_EXEC_FAIL_SECURITY: security breach in PBS directory",
    -22: "JOB_EXEC_HOOKERROR: hook raised an exception or timed out",
    -23: "JOB_EXEC_FAIL_KRB5: no kerberos credentials supplied",
    -24: "JOB_EXEC_KILL_NCPUS_BURST: job exceeded ncpus (burst)",
    -25: "JOB_EXEC_KILL_NCPUS_SUM: job exceeded ncpus (sum)",
    -26: "JOB_EXEC_KILL_VMEM: job exceeded vmem",
    -27: "JOB_EXEC_KILL_MEM: job exceeded mem",
    -28: "JOB_EXEC_KILL_CPUT: job exceeded cput",
    -29: "JOB_EXEC_KILL_WALLTIME: job exceeded walltime",
    -30: "JOB_EXEC_JOINJOB: join job error",
}
_KILL_WALLTIME = -29
_SUBSTATE_TERMINATED = 91
_QUEUED = frozenset("QHWT")  # held and waiting jobs still wait for their turn
_RUNNING = frozenset("REBSU")  # E: exiting after having run; S/U: suspended, not over
_FINISHED = frozenset("FX")  # X: finished subjob of an array
# "1234[].server" (an array), "1234[7].server" (a subjob), "1234.server" (a plain job)
_JOB_ID = re.compile(r"(\d+)(?:\[(\d*)\])?(.*)")
# The comments the server gives a finished subjob it shows from its array's record, having no
# record of the subjob itself (status_subjob in OpenPBS src/server/stat_job.c). Since OpenPBS
# 22.05 every such subjob is "finished", however it ended (also one deleted while queued): over,
# with no word on how, so no reason is given and the task's files, or the user's cancel, decide.
_SHOWN_FROM_ARRAY = {"Subjob finished": JobState(State.FAILED, None),
                     "Subjob failed": JobState(State.FAILED, "Subjob failed"),
                     "Subjob terminated": JobState(State.CANCELLED, "Subjob terminated")}


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _clock_seconds(value: Any) -> int | None:
    """PBS's "HH:MM:SS" (hours may exceed 24) as seconds, or None."""
    parts = str(value).split(":") if value is not None else []
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]) * 3600 + int(parts[1]) * 60 + int(parts[2])


def _finished(job: dict[str, Any]) -> JobState:
    """Our final state for a job in state F (see the module docstring for the order)."""
    status = _as_int(job.get("Exit_status"))
    comment = str(job.get("comment") or "").strip() or None
    terminated = (_as_int(job.get("substate")) == _SUBSTATE_TERMINATED
                  or (comment or "").endswith("and terminated"))

    def with_comment(text: str) -> str:
        return f"{text}; {comment}" if comment else text

    if status == _KILL_WALLTIME:
        return JobState(State.TIMED_OUT, with_comment(_JOB_EXEC[status]), None)
    if terminated:
        return JobState(State.CANCELLED, comment or "deleted (qdel)",
                        status if status is not None and 0 <= status < 256 else None)
    if status == 0:
        return JobState(State.COMPLETED, comment, 0)
    if status is None:
        return JobState(State.FAILED, with_comment("finished without an exit status"), None)
    if status < 0:
        text = _JOB_EXEC.get(status, "PBS could not run the job")
        return JobState(State.FAILED, with_comment(f"{text} (Exit_status {status})"), None)
    if status >= 256:
        signal = status - 256
        used = _clock_seconds((job.get("resources_used") or {}).get("walltime"))
        limit = _clock_seconds((job.get("Resource_List") or {}).get("walltime"))
        if used is not None and limit is not None and used >= limit:
            return JobState(State.TIMED_OUT, with_comment(
                f"killed by signal {signal} after using its walltime (Exit_status {status})"),
                128 + signal)
        return JobState(State.FAILED, with_comment(
            f"killed by signal {signal} (Exit_status {status})"), 128 + signal)
    return JobState(State.FAILED, with_comment(f"exit status {status}"), status)


def job_state(job: dict[str, Any]) -> JobState:
    """One job of `qstat -f -F json` in our state model."""
    state = str(job.get("job_state") or "")
    comment = str(job.get("comment") or "").strip() or None
    if state in _QUEUED:
        return JobState(State.QUEUED, comment)
    if state in _RUNNING:
        return JobState(State.RUNNING, None if state == "R" else f"PBS job state {state}")
    if state in _FINISHED:
        return _finished(job)
    if state == "M":
        return JobState("", "moved to another PBS server; ask that server")
    return JobState("", f"unknown PBS job state {state!r}")


# --------------------------------------------------------------------------------------------
# The scheduler


class Pbs(BatchScheduler):
    """PBS Professional / OpenPBS through qsub, qstat -F json and qdel."""

    name: ClassVar[str] = "pbs"
    directive: ClassVar[str] = "#PBS"
    title: ClassVar[str] = "PBS"
    never_requeue: ClassVar[str] = "-r n"
    job_id_variable: ClassVar[str] = "PBS_JOBID"

    # PBS Pro job names: up to 236 printable characters; keep to a set every version accepts.
    _NAME_CHARS = re.compile(r"[^A-Za-z0-9_.+-]")
    _NAME_LENGTH = 236
    # An output path is written as "-o <path>"; PBS reads "host:path", so no colon either.
    unsafe_path: ClassVar[re.Pattern[str]] = re.compile(r"[\s'\"\\#:]")
    unsafe_path_words: ClassVar[str] = "spaces, quotes, '#' or ':'"

    def resource_lines(self, resources: dict[str, Any], name: str, taskdir: str) -> list[str]:
        """`-N`, `-o`, `-e` and `-l` lines; a value PBS cannot express raises ValueError."""
        resources = {k: v for k, v in resources.items() if v is not None}
        unknown = set(resources) - {"walltime", "cores", "mem", "nodes", "gpus",
                                    "partition", "account"}
        if unknown:
            raise ValueError(f"unknown resource(s) for PBS: {', '.join(sorted(unknown))}")
        job_name = self._NAME_CHARS.sub("_", name)[: self._NAME_LENGTH] or "remote"
        paths = self.output_paths(taskdir)
        lines = [f"-N {job_name}", f"-o {paths.job_out}", f"-e {paths.job_err}"]

        if "walltime" in resources:
            seconds = walltime_seconds(resources["walltime"])
            hours, rest = divmod(seconds, 3600)
            lines.append(f"-l walltime={hours:02d}:{rest // 60:02d}:{rest % 60:02d}")

        nodes = positive_count(resources, "nodes")
        cores = positive_count(resources, "cores")
        gpus = positive_count(resources, "gpus")
        mem = memory_bytes(resources["mem"]) if "mem" in resources else None
        if nodes or cores or gpus or mem:
            chunk = [str(nodes or 1)]
            if cores:
                chunk.append(f"ncpus={cores}")
            if mem:
                chunk.append(f"mem={_pbs_size(mem)}")
            if gpus:
                chunk.append(f"ngpus={gpus}")
            lines.append("-l select=" + ":".join(chunk))
            if nodes and nodes > 1:
                lines.append("-l place=scatter")

        return lines + queue_lines(resources, "-q", "-A")

    array_variable: ClassVar[str] = "PBS_ARRAY_INDEX"
    array_job_variable: ClassVar[str] = "PBS_ARRAY_ID"
    array_never_requeue: ClassVar[bool] = False  # qsub: "cannot submit non-rerunable Array Job"
    array_index_pattern: ClassVar[str] = "^array_index^"

    def array_lines(self, array: Array) -> list[str]:
        """`-J 0-N[%K]`; PBS refuses an array of one element (the caller never submits one)."""
        limit = f"%{array.limit}" if array.limit else ""
        return [f"-J 0-{array.count - 1}{limit}"]

    def element_id(self, job_id: str, index: int) -> str:
        """"1234[].server" -> "1234[7].server" (also without the server part)."""
        found = _JOB_ID.fullmatch(job_id)
        if found is None:
            raise ValueError(f"not a PBS job id: {job_id!r}")
        return f"{found.group(1)}[{index}]{found.group(3)}"

    def submit_command(self, script: str) -> list[str]:
        """qsub reads the `#PBS` lines of the script file itself: no shell needed."""
        return ["qsub", script]

    def job_id(self, output: str) -> str:
        """The full id qsub prints ("1234.server"), which qstat and qdel expect back.

        Site submit filters sometimes print notices first, so the last line that looks like a
        PBS job id wins.
        """
        for line in reversed(output.strip().splitlines()):
            word = line.strip()
            if re.fullmatch(r"\d+(\[\d*\])?(\.[^\s]+)?", word):
                return word
        raise ValueError(f"qsub printed no job id: {output.strip()!r}")

    def status_command(self, job_ids: list[str]) -> list[str]:
        """One qstat for all jobs; `-x` keeps finished jobs in the answer. Subjobs are asked
        for by their array's id, once per array, with `-t` to list each of them."""
        if not job_ids:
            raise ValueError("no job ids: qstat without ids would list every job on the server")
        asked = list(dict.fromkeys(_array_of(job_id) for job_id in job_ids))
        subjobs = ["-t"] if any("[" in job_id for job_id in asked) else []
        return ["qstat", "-f", "-F", "json", "-x", *subjobs, *asked]

    def parse_status(self, output: str) -> dict[str, JobState]:
        """Jobs and subjobs by their full id; a job qstat does not know is left out (the queue
        forgot it). A finished subjob shown from its array's record is read by its comment
        alone: the other fields are the array's."""
        document = extract_json(output)
        if not document:
            return {}
        jobs = {job_id: job for job_id, job in (document.get("Jobs") or {}).items()
                if isinstance(job, dict)}
        states = {}
        for job_id, job in jobs.items():
            shown = _SHOWN_FROM_ARRAY.get(str(job.get("comment") or "").strip())
            subjob = "[" in job_id and "[]" not in job_id
            states[job_id] = replace(shown) if subjob and shown else job_state(job)
        for job_id, job in jobs.items():
            states.update(_still_queued(job_id, job, states))
        return states

    def read_status(self, job_ids: list[str], returncode: int, stdout: str,
                    stderr: str) -> dict[str, JobState] | None:
        """qstat exits non-zero when any id is one the server has purged, yet reports the
        others: when every complaint is such a per-job one, the answer stands (the purged
        jobs are left out: gone). Any other failure means the server could not be asked."""
        complaints = [line for line in stderr.splitlines() if line.strip()]
        if returncode != 0 and complaints and all(
                "Unknown Job Id" in line or "Job has finished" in line for line in complaints):
            returncode = 0
        return super().read_status(job_ids, returncode, stdout, stderr)

    def outcome_command(self, job_ids: list[str]) -> list[str] | None:
        """None: `qstat -x` in the status command already reports every job PBS remembers."""
        return None

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        if not job_ids:
            raise ValueError("no job ids to cancel")
        return ["qdel", *job_ids]


def _array_of(job_id: str) -> str:
    """The id to ask qstat about: a subjob ("1234[7].server") by its array ("1234[].server")."""
    found = _JOB_ID.fullmatch(job_id)
    if found is None or not found.group(2):
        return job_id
    return f"{found.group(1)}[]{found.group(3)}"


def _still_queued(job_id: str, job: dict[str, Any],
                  listed: dict[str, JobState]) -> dict[str, JobState]:
    """The queued subjobs of an array entry that qstat did not list one by one: the indices
    in its `array_indices_remaining` ("-" when none are left)."""
    found = _JOB_ID.fullmatch(job_id)
    remaining = str(job.get("array_indices_remaining") or "-").strip()
    if found is None or found.group(2) != "" or remaining == "-":
        return {}
    number, server = found.group(1), found.group(3)
    # the array's comment says why it waits only while the whole array does
    why = str(job.get("comment") or "").strip() if job.get("job_state") in _QUEUED else ""
    waiting = JobState(State.QUEUED, why or None)
    return {subjob: waiting for subjob in (f"{number}[{index}]{server}"
                                           for index in index_list(remaining))
            if subjob not in listed}


def _pbs_size(size: int) -> str:
    """Bytes in the largest PBS unit that keeps them whole (PBS sizes are integers)."""
    for unit, power in (("tb", 4), ("gb", 3), ("mb", 2), ("kb", 1)):
        if size % 1024**power == 0:
            return f"{size // 1024**power}{unit}"
    return f"{size}b"
