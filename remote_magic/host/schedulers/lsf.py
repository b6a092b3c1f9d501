"""IBM Spectrum LSF: job scripts, bsub/bjobs/bkill, and reading `bjobs -json`.

Why these commands:

* Submission pipes the script into bsub (`bsub < script`). Only that form makes bsub read the
  `#BSUB` lines: `bsub script` runs the file as a plain command unless the cluster sets
  LSB_BSUB_PARSE_SCRIPT=Y in lsf.conf, and `bsub -i file` would only make the file the job's
  stdin. The agent runs commands without a shell, so the command is an explicit
  `/bin/sh -c 'exec bsub < "$1"' sh <script>`: the path travels as an argument, never
  re-parsed by the shell.
* Status is one `bjobs -json -o "jobid stat exit_code exit_reason pend_reason" -a <ids...>`
  (JSON output needs LSF 10.1). `-a` keeps jobs that finished within CLEAN_PERIOD (one hour by
  default) in the answer; an id bjobs no longer knows comes back as an ERROR record
  ("Job <id> is not found") and is left out. Older history is in `bhist -l`, whose free text
  wraps at 80 columns; without a recorded sample to test a parser against, it is not read: the
  job script's exit-code file is the record of last resort, so there is no outcome command.

How a job is read: PEND/PSUSP/WAIT/PROV -> queued (with LSF's pending reason), RUN/USUSP/SSUSP
-> running, UNKWN/ZOMBI -> running (the host is unreachable or the job is being killed; LSF
still has to settle it), DONE -> completed. UNKWN is also LSF saying it cannot vouch for the
job: once the task's heartbeat has stopped too, the agent calls the task lost. EXIT is split
by the keyword of EXIT_REASON: killed by a user or administrator (TERM_OWNER, TERM_ADMIN,
TERM_FORCE_*, ...) -> cancelled, TERM_RUNLIMIT or TERM_DEADLINE -> timed_out, anything else
(TERM_MEMLIMIT, a non-zero exit) -> failed, with LSF's words kept as the reason. EXIT_CODE
is empty for every DONE job and for many killed ones, so it never decides the state.

Jobs are submitted with `-rn` (never rerunnable), which overrides a queue's or application
profile's RERUNNABLE setting: a cell must not run twice.

Resources: `cores`, `mem` and `gpus` are per node, `nodes` is a number of hosts. `-n` is the
total number of slots (nodes x cores), held on one host with `span[hosts=1]` or spread
`cores` per host with `span[ptile=cores]`. Memory is reserved with `rusage[mem=...]` in
explicit units (e.g. `8GB`), so the meaning does not depend on the cluster's
LSF_UNIT_FOR_LIMITS (KB by default, often MB); units in resource strings need LSF 10.1.0.2 or
later. LSF reserves it per host by default (per task only where RESOURCE_RESERVE_PER_TASK=Y),
which matches our per-node meaning. It is a reservation: whether a job is killed for going
over it is the cluster's memory-limit policy. The run limit `-W` is whole minutes.

Job arrays (IBM, "Job arrays" and bsub -J): the array is spelled into the job name,
`-J "name[1-N]%K"` (indices from 1, at most K elements running at once). Element i finds its
index in LSB_JOBINDEX and `%I` in its -o/-e paths becomes i; the queue calls it "123[4]",
which bkill takes as it is. bjobs asked about the array's id lists every element, pending ones
too; its JOBID is the array's alone (the index is in JOB_NAME, or in JOBINDEX when asked for,
0 for a plain job), unless the site sets LSB_BJOBS_DISPLAY_ENH=Y, which prints "123[4]".
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from ...wire.states import State
from ...wire.taskdir import TaskPaths
from .base import Array, BatchScheduler, JobState
from .units import (
    extract_json,
    memory_bytes,
    positive_count,
    queue_lines,
    walltime_seconds,
)

# EXIT_REASON keywords (IBM: "Termination reasons displayed by bacct, bhist, and bjobs").
_KILLED_BY_SOMEONE = frozenset({
    "TERM_OWNER", "TERM_ADMIN", "TERM_FORCE_OWNER", "TERM_FORCE_ADMIN", "TERM_BUCKET_KILL",
    "TERM_REQUEUE_OWNER", "TERM_REQUEUE_ADMIN",
})
_OUT_OF_TIME = frozenset({"TERM_RUNLIMIT", "TERM_DEADLINE"})

_QUEUED = frozenset({"PEND", "PSUSP", "WAIT", "PROV"})
_RUNNING = frozenset({"RUN", "USUSP", "SSUSP"})
_UNSETTLED = frozenset({"UNKWN", "ZOMBI"})

_STATUS_FIELDS = "jobid stat exit_code exit_reason pend_reason"
_ARRAY_STATUS_FIELDS = "jobid jobindex stat exit_code exit_reason pend_reason"
_ARRAY_SPEC_LENGTH = 255  # the most bsub -J takes for "name[indices]%limit"
_ELEMENT = re.compile(r"(\d+)\[(\d+)\]")  # "123[4]": element 4 of array job 123


class _ArrayName(str):
    """A job name with the array spelled in ("name[1-100]%5"), already made safe: kept as it
    is, where any other name loses its brackets (a user's name must not make an array)."""


def _text(record: dict[str, Any], key: str) -> str:
    """A field of a bjobs record, without the trailing ';' LSF puts after reasons."""
    return str(record.get(key) or "").strip().rstrip(";").strip()


def job_state(record: dict[str, Any]) -> JobState:
    """One record of `bjobs -json` in our state model."""
    stat = _text(record, "STAT")
    code_text = _text(record, "EXIT_CODE")
    code = int(code_text) if re.fullmatch(r"-?\d+", code_text) else None
    if stat in _QUEUED:
        reason = _text(record, "PEND_REASON") or None
        if stat != "PEND":
            reason = f"{stat}: {reason}" if reason else stat
        return JobState(State.QUEUED, reason)
    if stat in _RUNNING:
        return JobState(State.RUNNING, None if stat == "RUN" else stat)
    if stat in _UNSETTLED:
        return JobState(State.RUNNING, f"{stat}: LSF has not settled this job yet",
                        unreachable=stat == "UNKWN")
    if stat == "DONE":
        return JobState(State.COMPLETED, None, 0)
    if stat == "EXIT":
        reason = _text(record, "EXIT_REASON")
        keyword = reason.split(":", 1)[0].strip().upper()
        if keyword in _KILLED_BY_SOMEONE:
            return JobState(State.CANCELLED, reason, code)
        if keyword in _OUT_OF_TIME:
            return JobState(State.TIMED_OUT, reason, code)
        if not reason:
            reason = f"exit code {code}" if code is not None else "exited (no reason given)"
        return JobState(State.FAILED, reason, code)
    return JobState("", f"unknown LSF job state {stat!r}")


class Lsf(BatchScheduler):
    """IBM Spectrum LSF through bsub (script on stdin), bjobs -json and bkill."""

    name: ClassVar[str] = "lsf"
    directive: ClassVar[str] = "#BSUB"
    title: ClassVar[str] = "LSF"
    never_requeue: ClassVar[str] = "-rn"
    job_id_variable: ClassVar[str] = "LSB_JOBID"
    restart_variable: ClassVar[str | None] = "LSB_RESTART"

    # "[" and "]" in a job name would make it a job array; keep to plain characters.
    _NAME_CHARS = re.compile(r"[^A-Za-z0-9_.+-]")
    _NAME_LENGTH = 512
    # "%J"/"%I" in -o/-e are expanded by LSF; spaces and quotes would break the #BSUB line.
    unsafe_path: ClassVar[re.Pattern[str]] = re.compile(r"[\s'\"\\#%]")
    unsafe_path_words: ClassVar[str] = "spaces, quotes, '#' or '%'"

    def resource_lines(self, resources: dict[str, Any], name: str, taskdir: str) -> list[str]:
        """`-J`, `-o`, `-e`, `-W`, `-n`, `-R`, `-gpu`, `-q`, `-P` lines; ValueError if LSF
        cannot express a value (e.g. a walltime with seconds)."""
        resources = {k: v for k, v in resources.items() if v is not None}
        unknown = set(resources) - {"walltime", "cores", "mem", "nodes", "gpus",
                                    "partition", "account"}
        if unknown:
            raise ValueError(f"unknown resource(s) for LSF: {', '.join(sorted(unknown))}")
        if isinstance(name, _ArrayName):
            job_name = f'"{name}"'  # quoted, as bsub -J wants an array's name
        else:
            job_name = self._safe_name(name)
        paths = self.output_paths(taskdir)
        lines = [f"-J {job_name}", f"-o {paths.job_out}", f"-e {paths.job_err}"]

        if "walltime" in resources:
            seconds = walltime_seconds(resources["walltime"])
            if seconds % 60:
                raise ValueError(
                    f"walltime {resources['walltime']!r}: LSF run limits (-W) are whole "
                    "minutes; drop the seconds"
                )
            hours, minutes = divmod(seconds // 60, 60)
            lines.append(f"-W {hours}:{minutes:02d}")

        nodes = positive_count(resources, "nodes")
        cores = positive_count(resources, "cores")
        gpus = positive_count(resources, "gpus")
        requirement = []
        if "mem" in resources:
            requirement.append(f"rusage[mem={_lsf_size(memory_bytes(resources['mem']))}]")
        if nodes or cores:
            lines.append(f"-n {(nodes or 1) * (cores or 1)}")
            if nodes and nodes > 1:
                requirement.append(f"span[ptile={cores or 1}]")
            else:
                requirement.append("span[hosts=1]")
        if requirement:
            lines.append(f'-R "{" ".join(requirement)}"')
        if gpus:
            lines.append(f'-gpu "num={gpus}"')

        return lines + queue_lines(resources, "-q", "-P")

    def _safe_name(self, name: str) -> str:
        return self._NAME_CHARS.sub("_", name)[: self._NAME_LENGTH] or "remote"

    def output_paths(self, taskdir: str) -> TaskPaths:
        """As for any scheduler, except that an array's output paths end in `%I` (the element's
        index, which LSF fills in): the only '%' let through."""
        folder, _, last = taskdir.rpartition("/")
        if last == self.array_index_pattern and folder:
            super().output_paths(folder)
            return TaskPaths(taskdir)
        return super().output_paths(taskdir)

    array_variable: ClassVar[str] = "LSB_JOBINDEX"
    array_job_variable: ClassVar[str] = "LSB_JOBID"
    array_index_pattern: ClassVar[str] = "%I"
    array_base: ClassVar[int] = 1  # LSF array indices start at 1

    def array_name(self, name: str, array: Array) -> str:
        """"name[1-N]%K"; bsub takes at most 255 characters for it, so the name gives way."""
        spec = f"[1-{array.count}]" + (f"%{array.limit}" if array.limit else "")
        return _ArrayName(self._safe_name(name)[: _ARRAY_SPEC_LENGTH - len(spec)] + spec)

    def array_lines(self, array: Array) -> list[str]:
        return []  # the name says it all (array_name)

    def element_id(self, job_id: str, index: int) -> str:
        return f"{job_id}[{index}]"

    def submit_command(self, script: str) -> list[str]:
        """`bsub < script` without handing the path to a shell parser (see module docstring)."""
        return ["/bin/sh", "-c", 'exec bsub < "$1"', "sh", script]

    def job_id(self, output: str) -> str:
        """The number in "Job <1234> is submitted to [default] queue <normal>."."""
        match = re.search(r"Job <(\d+)> is submitted", output)
        if match is None:
            raise ValueError(f"bsub printed no job id: {output.strip()!r}")
        return match.group(1)

    def status_command(self, job_ids: list[str]) -> list[str]:
        """One bjobs for all jobs; `-a` keeps recently finished ones in the answer. Array
        elements are asked for by their array's id, once, which lists each element, and
        `jobindex` says which element a record is."""
        if not job_ids:
            raise ValueError("no job ids: bjobs without ids would list all of the user's jobs")
        asked = list(dict.fromkeys(_array_of(job_id) for job_id in job_ids))
        elements = any(_ELEMENT.fullmatch(job_id) for job_id in job_ids)
        fields = _ARRAY_STATUS_FIELDS if elements else _STATUS_FIELDS
        return ["bjobs", "-json", "-o", fields, "-a", *asked]

    def parse_status(self, output: str) -> dict[str, JobState]:
        """Jobs by id, array elements as "123[4]"; ERROR records (ids bjobs no longer knows)
        are left out."""
        document = extract_json(output)
        if not document:
            return {}
        states = {}
        for record in document.get("RECORDS") or []:
            if not isinstance(record, dict) or "ERROR" in record or not record.get("JOBID"):
                continue
            states[_record_id(record)] = job_state(record)
        return states

    def read_status(self, job_ids: list[str], returncode: int, stdout: str,
                    stderr: str) -> dict[str, JobState] | None:
        """bjobs may exit non-zero because some id is not found (LSB_BJOBS_CONSISTENT_EXIT_CODE)
        while its JSON still lists every job, forgotten ones as ERROR records: that is an
        answer. Without such a document ("LSF is down", a timeout) it could not be asked."""
        if returncode != 0 and '"RECORDS"' in stdout:
            returncode = 0
        return super().read_status(job_ids, returncode, stdout, stderr)

    def outcome_command(self, job_ids: list[str]) -> list[str] | None:
        """None: see the module docstring (bhist text is not parsed)."""
        return None

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        if not job_ids:
            raise ValueError("no job ids to cancel")
        return ["bkill", *job_ids]


def _array_of(job_id: str) -> str:
    """The id to ask bjobs about: an element ("123[4]") by its array's id."""
    found = _ELEMENT.fullmatch(job_id)
    return found.group(1) if found else job_id


def _record_id(record: dict[str, Any]) -> str:
    """A bjobs record's id as we name it: "123", or "123[4]" for an element of an array."""
    job_id = str(record["JOBID"]).strip()
    index = _text(record, "JOBINDEX")
    if "[" in job_id or index in ("", "0"):  # already "123[4]", or a plain job (index 0)
        return job_id
    return f"{job_id}[{index}]"


def _lsf_size(size: int) -> str:
    """Bytes in the largest LSF unit that keeps them whole; LSF's smallest unit is KB."""
    for unit, power in (("TB", 4), ("GB", 3), ("MB", 2), ("KB", 1)):
        if size % 1024**power == 0:
            return f"{size // 1024**power}{unit}"
    raise ValueError(f"mem of {size} bytes is not a whole number of kilobytes, LSF's smallest unit")
