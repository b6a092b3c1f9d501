"""Son of Grid Engine (and its Grid Engine kin): qsub, qstat -xml for all jobs, qacct after.

Cores are requested through a parallel environment, whose name is site-specific: "smp" here,
changed with the host's own `template` where a site calls it otherwise.

A job is submitted with `-r no`, and never exits with 99 (Grid Engine would run it again) or
100 (it would hold it in an error state). A running job whose heartbeat stopped is checked with
`qping` on the execution daemon of its host: qstat keeps listing the job as running on a dead
host for as long as the qmaster has not given up on it (max_unheard, 5 minutes by default),
and does not end it even then.

Job arrays (`-t 1-N`, at most K at once with `-tc K`): element i writes its output through
`$TASK_ID` in the -o/-e paths and finds its index in SGE_TASK_ID; the queue calls it "123.4"
here. qstat lists a running element on its own and pending ones as a range ("5-100:1", or
"1,3,6" once some left the range): each becomes one answer per element. `qacct -j 123`
prints one record per element that ran (`taskid`); `qdel 123 -t 4` deletes one element.
Checked against SGE 8.1.9 (qstat(1), qdel(1), qacct(1), sge_types(1)).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from typing import Any, ClassVar

from ...wire.states import State
from .base import Array, BatchScheduler, JobState, Vouch, last_line, unknown
from .units import index_list, memory_bytes, positive_count, queue_lines, walltime_seconds

PARALLEL_ENVIRONMENT = "smp"
# qping needs the execution daemon's port: the cell's setting, else the services database.
_QPING = ('port=${SGE_EXECD_PORT:-$(getent services sge_execd 2>/dev/null | '
          'awk \'{ sub("/.*", "", $2); print $2 }\')}; '
          'command -v qping >/dev/null || exit 127; '
          'exec qping -info "$1" "${port:-6445}" execd 1')
# One part of an index list: "7", or "5-100" with an optional step ":2".


class Sge(BatchScheduler):
    name = "sge"
    directive = "#$"
    title: ClassVar[str] = "Grid Engine"
    never_requeue: ClassVar[str] = "-r no"
    job_id_variable: ClassVar[str] = "JOB_ID"
    restart_variable: ClassVar[str | None] = "RESTARTED"
    reserved_exit_codes: ClassVar[frozenset[int]] = frozenset({99, 100})

    def resource_lines(self, resources: dict[str, Any], name: str, taskdir: str) -> list[str]:
        paths = self.output_paths(taskdir)
        lines = [f"-N {name}", f"-o {paths.job_out}", f"-e {paths.job_err}", "-S /bin/bash"]
        if "walltime" in resources:
            seconds = walltime_seconds(resources["walltime"])
            hours, rest = divmod(seconds, 3600)
            lines.append(f"-l h_rt={hours}:{rest // 60:02d}:{rest % 60:02d}")
        cores = positive_count(resources, "cores")
        if cores:
            lines.append(f"-pe {PARALLEL_ENVIRONMENT} {cores}")
        if "mem" in resources:
            per_slot = -(-memory_bytes(resources["mem"]) // (cores or 1) // 2 ** 20)
            lines.append(f"-l h_vmem={per_slot}M")  # Grid Engine counts memory per slot
        nodes = positive_count(resources, "nodes")
        if nodes and nodes > 1:
            raise ValueError("Grid Engine places a job by slots, not nodes: ask for --cores "
                             "and set the parallel environment in the host's template")
        gpus = positive_count(resources, "gpus")
        if gpus:
            lines.append(f"-l gpu={gpus}")
        return lines + queue_lines(resources, "-q", "-P")

    array_variable: ClassVar[str] = "SGE_TASK_ID"
    array_job_variable: ClassVar[str] = "JOB_ID"
    array_index_pattern: ClassVar[str] = "$TASK_ID"  # qsub expands it in -o and -e paths
    array_base: ClassVar[int] = 1  # Grid Engine counts tasks from 1

    def array_lines(self, array: Array) -> list[str]:
        lines = [f"-t 1-{array.count}"]
        if array.limit:
            lines.append(f"-tc {array.limit}")
        return lines

    def element_id(self, job_id: str, index: int) -> str:
        return f"{job_id}.{index}"

    def submit_command(self, script: str) -> list[str]:
        return ["qsub", "-terse", script]

    def job_id(self, output: str) -> str:
        words = output.split()
        if not words or not words[-1].split(".")[0].isdigit():
            raise ValueError(f"qsub printed no job id: {output.strip()[:200]!r}")
        return words[-1].split(".")[0]

    def status_command(self, job_ids: list[str]) -> list[str]:
        return ["qstat", "-xml"]  # all of this user's jobs; the ones we ask for are picked out

    def parse_status(self, output: str) -> dict[str, JobState]:
        """Jobs by number, array elements by "number.index": qstat shows a pending array as
        ONE entry whose `tasks` is a range, and each element must still get its answer."""
        root = ElementTree.fromstring(output)
        jobs = {}
        for job in root.iter("job_list"):
            number = (job.findtext("JB_job_number") or "").strip()
            if not number:
                continue
            state = _job_state(job)
            tasks = (job.findtext("tasks") or "").strip()
            if not tasks:
                jobs[number] = state
                continue
            for index in index_list(tasks):
                jobs[f"{number}.{index}"] = state
        return jobs

    def outcome_command(self, job_ids: list[str]) -> list[str] | None:
        # qacct takes one job at a time: one shell command loops over them. The loop's exit
        # code is that of the last qacct, so `read_outcome` judges each job by its own output.
        # An array is asked about once: qacct prints a record for each element that ran.
        return ["sh", "-c", 'for j in "$@"; do qacct -j "$j"; done', "sh", *_arrays(job_ids)]

    def read_outcome(self, job_ids: list[str], returncode: int, stdout: str,
                     stderr: str) -> dict[str, JobState]:
        """Each job on its own: one job missing from accounting ("error: job id N not found",
        e.g. not yet flushed) must not throw away the records of the others. An array element
        without a record while qacct knows its array (it never ran: deleted while pending, or
        its record is not written yet) is left out the same way."""
        jobs = self.parse_outcome(stdout)
        answered = {key.partition(".")[0] for key in jobs}
        for job_id in job_ids:
            number = job_id.partition(".")[0]
            if job_id in jobs or f"job id {number} not found" in stderr:
                continue
            if number != job_id and number in answered:
                continue
            jobs[job_id] = unknown(f"qacct did not answer: {last_line(stderr or stdout)}")
        return jobs

    def parse_outcome(self, output: str) -> dict[str, JobState]:
        """Records by job number, or "number.taskid" for an element of an array (a plain job
        says `taskid undefined`)."""
        jobs = {}
        for block in output.split("=" * 20):
            fields = {}
            for line in block.splitlines():
                key, _, value = line.partition(" ")
                if key:
                    fields[key] = value.strip()
            number = fields.get("jobnumber")
            if not number:
                continue
            task = fields.get("taskid", "")
            key = f"{number}.{task}" if task.isdigit() else number
            failed = fields.get("failed", "0")
            # "137                  (Killed)": the number, then qacct's reading of it
            status = (fields.get("exit_status", "").split() or [""])[0]
            code = int(status) if status.lstrip("-").isdigit() else None
            if "h_rt" in failed:
                jobs[key] = JobState(State.TIMED_OUT, failed, code)
            elif failed.split()[0] == "0" and code == 0:
                jobs[key] = JobState(State.COMPLETED, None, 0)
            else:
                reason = failed if failed.split()[0] != "0" else f"exit status {status}"
                jobs[key] = JobState(State.FAILED, reason, code)
        return jobs

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        """One qdel for all: a plain job by its number, array elements as `NUMBER -t RANGE`
        (sge_types(1): each job may be followed by its own task range), consecutive elements
        of one array in one range. The array's own number deletes all of its elements."""
        words: list[str] = []
        for job_id, tasks in _by_array(job_ids).items():
            if tasks is None:
                words.append(job_id)
                continue
            for first, last in _runs(tasks):
                words += [job_id, "-t", str(first) if first == last else f"{first}-{last}"]
        return ["qdel", *words]

    def probe_command(self, job_id: str, job: JobState) -> list[str] | None:
        """qping the execution daemon of the job's host (None when qstat named no host)."""
        if not job.host:
            return None
        return ["sh", "-c", _QPING, "sh", job.host]

    def read_probe(self, job_id: str, job: JobState, returncode: int, stdout: str,
                   stderr: str) -> Vouch:
        if returncode == 0:
            return Vouch(True, f"the Grid Engine execution daemon on {job.host} answers")
        if returncode in (124, 127):  # our timeout, or no qping on this host: no answer
            return Vouch(None, f"qping could not ask {job.host}: {last_line(stderr or stdout)}")
        return Vouch(False, f"the Grid Engine execution daemon on {job.host} does not answer "
                            f"(qping: {last_line(stderr or stdout)}): the host is down or cut off")


def _job_state(job: ElementTree.Element) -> JobState:
    """One qstat entry (a job, an array element, or a range of pending elements)."""
    code = (job.findtext("state") or "").strip()
    if "E" in code:
        return JobState(State.FAILED, f"Grid Engine error state {code}")
    if "d" in code or code.endswith("r") or code in ("t", "Rr", "Rt", "s", "S"):
        queue = (job.findtext("queue_name") or "").strip()
        return JobState(State.RUNNING, code, host=queue.partition("@")[2] or None)
    return JobState(State.QUEUED, code)  # qw, hqw, hRwq...


def _arrays(job_ids: list[str]) -> list[str]:
    """The job numbers to ask about: an array element (123.4) by its array's number, once."""
    return list(dict.fromkeys(j.partition(".")[0] for j in job_ids))


def _by_array(job_ids: list[str]) -> dict[str, list[int] | None]:
    """Job numbers, each with the elements asked for (None: the whole job)."""
    found: dict[str, list[int] | None] = {}
    for job_id in job_ids:
        number, _, task = job_id.partition(".")
        if task and not task.isdigit():
            raise ValueError(f"not a Grid Engine job or array element id: {job_id!r}")
        tasks = found.setdefault(number, [])
        if not task:
            found[number] = None  # the whole job, whatever else was asked
        elif tasks is not None:
            tasks.append(int(task))
    return found


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices as runs of consecutive ones: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    runs: list[tuple[int, int]] = []
    for index in sorted(set(indices)):
        if runs and index == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs
