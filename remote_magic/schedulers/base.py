"""The shared batch layer: what every scheduler module fills in, and the job script template.

A scheduler is a small module with a subclass of `BatchScheduler` that says how to render a
job script, how to submit it and read the job id, how to ask about ALL of a host's jobs in one
command, how to read that answer into our state model, how to cancel, and how to ask about a
job the queue has already forgotten. Everything else (submitting through the agent, polling,
the task directory) is shared. The agent imports these modules on the host, so they use the
standard library only.

The job script writes the task's exit-code file even when Python dies, so a job missing from
the queue is finished and its task directory says how.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, ClassVar

# Placeholders a host's own `template` may use (str.format fields):
#   {name} job name · {taskdir} task directory · {workdir} the task's working directory
#   {directives} the resource lines this scheduler renders · {setup} the host's setup lines
#   {runner} the command that runs the task · {exitcode} the exit-code file
DEFAULT_BODY = """\
{setup}
cd {workdir}
{runner}
code=$?
[ -s {exitcode} ] || {{ echo "$code" > {exitcode}.tmp && mv {exitcode}.tmp {exitcode}; }}
exit "$code"
"""


@dataclass
class JobState:
    """What the scheduler says about one job, in our state model."""

    state: str  # queued, running, completed, failed, cancelled, timed_out (or "" if unknown)
    reason: str | None = None  # the scheduler's words, kept (e.g. OUT_OF_MEMORY, a pending reason)
    exit_code: int | None = None


class BatchScheduler:
    """Hooks of one batch system; subclasses set `name`, `directive` and fill the methods."""

    name: ClassVar[str] = ""
    directive: ClassVar[str] = ""  # the comment prefix of resource lines, e.g. "#SBATCH"

    # ------------------------------------------------------------ job script

    def resource_lines(self, resources: dict[str, Any], name: str, taskdir: str) -> list[str]:
        """The scheduler's own directives for the name, output files and resources."""
        raise NotImplementedError

    def render(self, template: str | None, resources: dict[str, Any], name: str,
               taskdir: str, setup: str, runner: str) -> str:
        """The whole job script, from the host's template or the built-in one."""
        directives = "\n".join(f"{self.directive} {line}" for line in
                               self.resource_lines(resources, name, taskdir))
        fields = {"name": name, "taskdir": shlex.quote(taskdir),
                  "workdir": shlex.quote(taskdir + "/work"), "directives": directives,
                  "setup": setup, "runner": runner,
                  "exitcode": shlex.quote(taskdir + "/exitcode")}
        if template is not None:
            return template.format(**fields)
        return "#!/bin/bash\n" + directives + "\n" + DEFAULT_BODY.format(**fields)

    # ------------------------------------------------------------ commands and answers

    def submit_command(self, script: str) -> list[str]:
        raise NotImplementedError

    def job_id(self, output: str) -> str:
        """The job id, from what the submit command printed."""
        raise NotImplementedError

    def status_command(self, job_ids: list[str]) -> list[str]:
        """ONE command that reports on all these jobs (those still in the queue)."""
        raise NotImplementedError

    def parse_status(self, output: str) -> dict[str, JobState]:
        raise NotImplementedError

    def outcome_command(self, job_ids: list[str]) -> list[str] | None:
        """A command about jobs the queue has forgotten (accounting), or None."""
        return None

    def parse_outcome(self, output: str) -> dict[str, JobState]:
        return {}

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        raise NotImplementedError
