"""SLURM: sbatch, squeue for all of a host's jobs at once, sacct for jobs the queue forgot.

A running job whose heartbeat stopped is checked with `sstat` on its batch step: sstat asks
slurmd on the job's node itself, so it tells a dead node from a live one at once, where
squeue keeps saying RUNNING until slurmctld gives up on the node (SlurmdTimeout, 300 s by
default).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from ...wire.states import State
from .base import Array, BatchScheduler, JobState, Vouch, last_line, unknown
from .units import directive_word, memory_bytes, positive_count

# Our states for SLURM's job states (squeue %T and sacct State, whose "CANCELLED by 123"
# is cut to its first word before lookup).
STATES = {
    "PENDING": State.QUEUED, "CONFIGURING": State.QUEUED, "REQUEUED": State.QUEUED,
    "REQUEUE_HOLD": State.QUEUED, "REQUEUE_FED": State.QUEUED, "RESV_DEL_HOLD": State.QUEUED,
    "SUSPENDED": State.RUNNING, "RUNNING": State.RUNNING, "COMPLETING": State.RUNNING,
    "STAGE_OUT": State.RUNNING, "SIGNALING": State.RUNNING, "RESIZING": State.RUNNING,
    "COMPLETED": State.COMPLETED, "CANCELLED": State.CANCELLED, "TIMEOUT": State.TIMED_OUT,
    "DEADLINE": State.TIMED_OUT, "FAILED": State.FAILED, "NODE_FAIL": State.FAILED,
    "BOOT_FAIL": State.FAILED,
    "OUT_OF_MEMORY": State.FAILED, "PREEMPTED": State.FAILED, "REVOKED": State.FAILED,
    "SPECIAL_EXIT": State.FAILED,
}


# What sstat 22.05 prints when a node's slurmd does not answer (connection refused, timed out),
# or answers with an error: the node's name and SLURM's words.
_NO_ANSWER = re.compile(r"unknown return given from (\S+?): -?\d+ rc = (.+)")
_NODE_ERROR = re.compile(r"there was an error with the request to (\S+) rc = (.+)")


class Slurm(BatchScheduler):
    name = "slurm"
    directive = "#SBATCH"
    title: ClassVar[str] = "SLURM"
    never_requeue: ClassVar[str] = "--no-requeue"
    job_id_variable: ClassVar[str] = "SLURM_JOB_ID"
    restart_variable: ClassVar[str | None] = "SLURM_RESTART_COUNT"

    def resource_lines(self, resources: dict[str, Any], name: str, taskdir: str) -> list[str]:
        paths = self.output_paths(taskdir)
        # append: should SLURM start the job again, what each start said is kept
        lines = [f"--job-name={name}", f"--output={paths.job_out}", f"--error={paths.job_err}",
                 "--open-mode=append"]
        if "walltime" in resources:
            lines.append(f"--time={resources['walltime']}")  # minutes, [D-]H:M:S as we check
        if "mem" in resources:
            lines.append(f"--mem={slurm_memory(resources['mem'])}")
        for key, option in (("cores", "cpus-per-task"), ("nodes", "nodes"), ("gpus", "gpus")):
            count = positive_count(resources, key)
            if count:
                lines.append(f"--{option}={count}")
        for key in ("partition", "account"):
            value = directive_word(resources, key)
            if value:
                lines.append(f"--{key}={value}")
        return lines

    array_variable: ClassVar[str] = "SLURM_ARRAY_TASK_ID"
    array_job_variable: ClassVar[str] = "SLURM_ARRAY_JOB_ID"
    array_index_pattern: ClassVar[str] = "%a"

    def array_lines(self, array: Array) -> list[str]:
        limit = f"%{array.limit}" if array.limit else ""
        return [f"--array=0-{array.count - 1}{limit}"]

    def element_id(self, job_id: str, index: int) -> str:
        return f"{job_id}_{index}"

    def submit_command(self, script: str) -> list[str]:
        return ["sbatch", "--parsable", script]

    def job_id(self, output: str) -> str:
        # --parsable prints "id" or "id;cluster"
        text = output.strip().splitlines()[-1] if output.strip() else ""
        job_id = text.split(";")[0].strip()
        if not job_id.isdigit():
            raise ValueError(f"sbatch printed no job id: {output.strip()[:200]!r}")
        return job_id

    def status_command(self, job_ids: list[str]) -> list[str]:
        # -t all: a finished job stays listed, with its final state (TIMEOUT, CANCELLED...),
        # for MinJobAge after it ends, with or without accounting.
        # -r: one line per array element (a pending array is otherwise one line, 12_[3-99]);
        # an array is asked about once, by its own id, however many of its elements we follow
        return ["squeue", "-h", "-r", "-t", "all", "-j", ",".join(_arrays(job_ids)),
                "-o", "%i|%T|%r"]

    def read_status(self, job_ids: list[str], returncode: int, stdout: str,
                    stderr: str) -> dict[str, JobState] | None:
        """squeue asked about ONE job the controller has forgotten fails ("Invalid job id
        specified"); that is an answer (the job left the queue), not a failure to ask."""
        if returncode != 0 and "Invalid job id specified" in stderr:
            return {}
        return super().read_status(job_ids, returncode, stdout, stderr)

    def parse_status(self, output: str) -> dict[str, JobState]:
        jobs = {}
        for line in output.splitlines():
            parts = line.strip().split("|")
            if len(parts) < 2:
                continue
            job_id, state = parts[0], parts[1]
            reason = parts[2] if len(parts) > 2 and parts[2] not in ("None", "") else None
            jobs[job_id] = JobState(STATES.get(state, ""), reason or state)
        return by_element(jobs)

    def outcome_command(self, job_ids: list[str]) -> list[str] | None:
        # JobID, not JobIDRaw: an array element is 12_3 in both squeue and JobID
        return ["sacct", "-n", "-P", "-X", "-j", ",".join(_arrays(job_ids)),
                "-o", "JobID,State,ExitCode,Reason,End"]

    def parse_outcome(self, output: str) -> dict[str, JobState]:
        """A record whose End is still Unknown is not final: when a job ends before slurmdbd
        has its start record, the start record is written with the final State but without
        the exit code (FAILED, 0:0), and the completion record follows; so ask again."""
        jobs = {}
        for line in output.splitlines():
            parts = line.strip().split("|")
            if len(parts) < 3:
                continue
            job_id, raw_state, exit_code = parts[0], parts[1], parts[2]
            if len(parts) > 4 and parts[4] == "Unknown":
                jobs[job_id] = unknown(f"accounting has not recorded the end of job {job_id} yet")
                continue
            word = raw_state.split()[0] if raw_state.split() else ""
            code, _, signal = exit_code.partition(":")
            reason = raw_state if word not in ("COMPLETED",) else None
            if signal not in ("", "0"):
                reason = f"{raw_state} (signal {signal})"
            jobs[job_id] = JobState(STATES.get(word, ""), reason,
                                    int(code) if code.isdigit() else None)
        return by_element(jobs)

    def read_outcome(self, job_ids: list[str], returncode: int, stdout: str,
                     stderr: str) -> dict[str, JobState]:
        """Without accounting, sacct always fails ("accounting storage is disabled"): it will
        never know any job, so that is an answer; any other failure is asked again later."""
        if returncode != 0 and "accounting storage is disabled" in stderr.lower():
            return {}
        return super().read_outcome(job_ids, returncode, stdout, stderr)

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        return ["scancel", *job_ids]

    def probe_command(self, job_id: str, job: JobState) -> list[str] | None:
        """sstat on the job's batch step: slurmctld says where it runs, slurmd there answers."""
        return ["sstat", "--noheader", "--parsable2", "--jobs", f"{job_id}.batch",
                "--format", "JobID"]

    def read_probe(self, job_id: str, job: JobState, returncode: int, stdout: str,
                   stderr: str) -> Vouch:
        """The node answered for the step (listed), did not answer (its slurmd is down or
        cut off), or no longer knows the step; anything else (the controller not answering,
        our own timeout) is no answer."""
        step = f"{job_id}.batch"
        if any(line.strip() == step for line in stdout.splitlines()):
            return Vouch(True, f"slurmd on its node answers for job {job_id}")
        for line in stderr.splitlines():
            found = _NO_ANSWER.search(line)
            if found:
                return Vouch(False, f"slurmd on {found.group(1)} does not answer for job "
                                    f"{job_id} ({found.group(2).strip()}): the node is down "
                                    "or cut off")
            found = _NODE_ERROR.search(line)
            if found and "invalid job id" in found.group(2).lower():
                return Vouch(False, f"slurmd on {found.group(1)} no longer runs job {job_id}")
        if returncode == 0 and not stderr.strip():
            # SLURM leaves a step its node has forgotten out without a word
            return Vouch(False, f"slurmd on the job's node no longer runs job {job_id}")
        return Vouch(None, f"sstat could not ask about job {job_id}: "
                           f"{last_line(stderr or stdout)}")


def slurm_memory(value: Any) -> str:
    """Our memory format ("8G", "1.5GiB", or megabytes as an int) in sbatch's whole megabytes."""
    if isinstance(value, int):
        return f"{value}M"
    size = memory_bytes(value)
    return f"{-(-size // 2 ** 20)}M"  # round up: a job must not get less than it asked for


def _arrays(job_ids: list[str]) -> list[str]:
    """The ids to ask about: an array element (12_3) by its array's id, each once."""
    return list(dict.fromkeys(j.partition("_")[0] for j in job_ids))


_RANGE = re.compile(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]")


def by_element(jobs: dict[str, JobState]) -> dict[str, JobState]:
    """Answers keyed by job or element id: a collapsed range (12_[3-5]) speaks for each of
    its elements that has no line of its own. Accounting keeps one for the elements of an
    array cancelled before they started, and it may span elements that ran, whose own
    lines are the ones to believe."""
    ranges = {j: job for j, job in jobs.items() if _RANGE.fullmatch(j)}
    found = {j: job for j, job in jobs.items() if j not in ranges}
    for job_id, job in ranges.items():
        for one in elements(job_id):
            found.setdefault(one, job)
    return found


def elements(job_id: str) -> list[str]:
    """The element ids a line names: itself, or each element of a collapsed range such as
    12_[3-5,8%2] (what accounting keeps for array elements cancelled before they started)."""
    found = _RANGE.fullmatch(job_id)
    if found is None:
        return [job_id]
    ids = []
    for part in found.group(2).split(","):
        first, _, last = part.partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            ids += [f"{found.group(1)}_{i}" for i in range(int(first), int(last or first) + 1)]
    return ids
