"""Son of Grid Engine (and its Grid Engine kin): qsub, qstat -xml for all jobs, qacct after.

Cores are requested through a parallel environment, whose name is site-specific: "smp" here,
changed with the host's own `template` where a site calls it otherwise.

A job is submitted with `-r no`, and never exits with 99 (Grid Engine would run it again) or
100 (it would hold it in an error state). A running job whose heartbeat stopped is checked with
`qping` on the execution daemon of its host: qstat keeps listing the job as running on a dead
host for as long as the qmaster has not given up on it (max_unheard, 5 minutes by default),
and does not end it even then.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from typing import Any, ClassVar

from ...wire.states import State
from .base import BatchScheduler, JobState, Vouch, last_line, unknown
from .units import memory_bytes, positive_count, queue_lines, walltime_seconds

PARALLEL_ENVIRONMENT = "smp"
# qping needs the execution daemon's port: the cell's setting, else the services database.
_QPING = ('port=${SGE_EXECD_PORT:-$(getent services sge_execd 2>/dev/null | '
          'awk \'{ sub("/.*", "", $2); print $2 }\')}; '
          'command -v qping >/dev/null || exit 127; '
          'exec qping -info "$1" "${port:-6445}" execd 1')


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
        root = ElementTree.fromstring(output)
        jobs = {}
        for job in root.iter("job_list"):
            number = (job.findtext("JB_job_number") or "").strip()
            code = (job.findtext("state") or "").strip()
            if not number:
                continue
            if "E" in code:
                jobs[number] = JobState(State.FAILED, f"Grid Engine error state {code}")
            elif "d" in code or code.endswith("r") or code in ("t", "Rr", "Rt", "s", "S"):
                queue = (job.findtext("queue_name") or "").strip()
                jobs[number] = JobState(State.RUNNING, code, host=queue.partition("@")[2] or None)
            else:  # qw, hqw, hRwq...
                jobs[number] = JobState(State.QUEUED, code)
        return jobs

    def outcome_command(self, job_ids: list[str]) -> list[str] | None:
        # qacct takes one job at a time: one shell command loops over them. The loop's exit
        # code is that of the last qacct, so `read_outcome` judges each job by its own output.
        return ["sh", "-c", 'for j in "$@"; do qacct -j "$j"; done', "sh", *job_ids]

    def read_outcome(self, job_ids: list[str], returncode: int, stdout: str,
                     stderr: str) -> dict[str, JobState]:
        """Each job on its own: one job missing from accounting ("error: job id N not found",
        e.g. not yet flushed) must not throw away the records of the others."""
        jobs = self.parse_outcome(stdout)
        for job_id in job_ids:
            if job_id not in jobs and f"job id {job_id} not found" not in stderr:
                jobs[job_id] = unknown(f"qacct did not answer: {last_line(stderr or stdout)}")
        return jobs

    def parse_outcome(self, output: str) -> dict[str, JobState]:
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
            failed = fields.get("failed", "0")
            status = fields.get("exit_status", "")
            code = int(status) if status.lstrip("-").isdigit() else None
            if "h_rt" in failed:
                jobs[number] = JobState(State.TIMED_OUT, failed, code)
            elif failed.split()[0] == "0" and code == 0:
                jobs[number] = JobState(State.COMPLETED, None, 0)
            else:
                reason = failed if failed.split()[0] != "0" else f"exit status {status}"
                jobs[number] = JobState(State.FAILED, reason, code)
        return jobs

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        return ["qdel", *job_ids]

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
