"""Son of Grid Engine (and its Grid Engine kin): qsub, qstat -xml for all jobs, qacct after.

Cores are requested through a parallel environment, whose name is site-specific: "smp" here,
changed with the host's own `template` where a site calls it otherwise.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from typing import Any

from .base import BatchScheduler, JobState, last_line, unknown
from .units import memory_bytes, positive_count, queue_lines, walltime_seconds

PARALLEL_ENVIRONMENT = "smp"


class Sge(BatchScheduler):
    name = "sge"
    directive = "#$"

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
                jobs[number] = JobState("failed", f"Grid Engine error state {code}")
            elif "d" in code or code.endswith("r") or code in ("t", "Rr", "Rt", "s", "S"):
                jobs[number] = JobState("running", code)
            else:  # qw, hqw, hRwq...
                jobs[number] = JobState("queued", code)
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
                jobs[number] = JobState("timed_out", failed, code)
            elif failed.split()[0] == "0" and code == 0:
                jobs[number] = JobState("completed", None, 0)
            else:
                reason = failed if failed.split()[0] != "0" else f"exit status {status}"
                jobs[number] = JobState("failed", reason, code)
        return jobs

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        return ["qdel", *job_ids]
