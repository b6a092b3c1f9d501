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

import re
import shlex
from dataclasses import dataclass
from typing import Any, ClassVar

from ..taskdir import TaskPaths

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

    state: str  # queued, running, completed, failed, cancelled, timed_out; "" if unknown
    reason: str | None = None  # the scheduler's words, kept (e.g. OUT_OF_MEMORY, a pending reason)
    exit_code: int | None = None


def unknown(reason: str) -> JobState:
    """The scheduler could not say (its command failed): ask again later, conclude nothing."""
    return JobState("", reason)


def last_line(text: str) -> str:
    """The last line a command printed: where scheduler commands put their error."""
    lines = text.strip().splitlines()
    return lines[-1][-300:] if lines else "no output"


class BatchScheduler:
    """Hooks of one batch system; subclasses set `name`, `directive` and fill the methods."""

    name: ClassVar[str] = ""
    directive: ClassVar[str] = ""  # the comment prefix of resource lines, e.g. "#SBATCH"
    # What an output path in a directive line cannot hold: the line is split on blanks, and
    # each scheduler reads a few more characters of its own (PBS "host:path", LSF "%J").
    unsafe_path: ClassVar[re.Pattern[str]] = re.compile(r"[\s'\"\\#]")
    unsafe_path_words: ClassVar[str] = "spaces, quotes or '#'"

    # ------------------------------------------------------------ job script

    def resource_lines(self, resources: dict[str, Any], name: str, taskdir: str) -> list[str]:
        """The scheduler's own directives for the name, output files and resources."""
        raise NotImplementedError

    def output_paths(self, taskdir: str) -> TaskPaths:
        """The task's paths, once its directory is known to fit in a directive line."""
        if self.unsafe_path.search(taskdir):
            raise ValueError(
                f"the task directory {taskdir!r} cannot be a {self.name.upper()} output path: "
                f"it must not contain {self.unsafe_path_words}; choose a host workdir without them"
            )
        return TaskPaths(taskdir)

    def render(self, template: str | None, resources: dict[str, Any], name: str,
               taskdir: str, setup: str, runner: str) -> str:
        """The whole job script, from the host's template or the built-in one."""
        directives = "\n".join(f"{self.directive} {line}" for line in
                               self.resource_lines(resources, name, taskdir))
        paths = TaskPaths(taskdir)
        fields = {"name": name, "taskdir": shlex.quote(taskdir),
                  "workdir": shlex.quote(str(paths.work)), "directives": directives,
                  "setup": setup, "runner": runner,
                  "exitcode": shlex.quote(str(paths.exitcode))}
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

    def read_status(self, job_ids: list[str], returncode: int, stdout: str,
                    stderr: str) -> dict[str, JobState] | None:
        """The queue's answer: jobs it lists; a job left out has left the queue.

        None when the scheduler could not be asked (a controller restarting, a timeout): a
        failed query says nothing about any job, so none may be taken for gone. A scheduler
        whose status command also fails for a definite answer ("no such job") overrides this.
        """
        if returncode != 0:
            return None
        try:
            return self.parse_status(stdout)
        except (ValueError, SyntaxError):  # cut short or garbled (XML errors are SyntaxErrors)
            return None

    def outcome_command(self, job_ids: list[str]) -> list[str] | None:
        """A command about jobs the queue has forgotten (accounting), or None."""
        return None

    def parse_outcome(self, output: str) -> dict[str, JobState]:
        return {}

    def read_outcome(self, job_ids: list[str], returncode: int, stdout: str,
                     stderr: str) -> dict[str, JobState]:
        """What accounting says about these jobs; a job it does not know is left out.

        A job it could not be asked about is `unknown(...)`, so that it is asked again later
        rather than taken for a job nobody knows.
        """
        if returncode == 0:
            try:
                return self.parse_outcome(stdout)
            except (ValueError, SyntaxError):
                pass
        why = unknown(f"{self.name} accounting did not answer: {last_line(stderr or stdout)}")
        return dict.fromkeys(job_ids, why)

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        raise NotImplementedError
