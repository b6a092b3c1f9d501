"""The shared batch layer: what every scheduler module fills in, and the job script template.

A scheduler is a small module with a subclass of `BatchScheduler` that says how to render a
job script, how to submit it and read the job id, how to ask about ALL of a host's jobs in one
command, how to read that answer into our state model, how to cancel, and how to ask about a
job the queue has already forgotten. Everything else (submitting through the agent, polling,
the task directory) is shared. The agent imports these modules on the host, so they use the
standard library only.

The job script writes the task's exit-code file even when Python dies, so a job missing from
the queue is finished and its task directory says how. Every job is submitted as one the
scheduler must not start again (`never_requeue`): a cell runs at most once, and the job's own
entry point (`schedulers/job.py`) refuses a second start where a site requeues anyway.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any, ClassVar

from ...wire.taskdir import TaskPaths

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
    host: str | None = None  # where a running job runs, when the status answer says
    # The scheduler itself has lost contact with the job's host (LSF's UNKWN): it lists the
    # job as running but can no longer vouch for it.
    unreachable: bool = False


@dataclass(frozen=True)
class Array:
    """A job array: how many elements, and how many may run at once (None: no limit)."""

    count: int
    limit: int | None = None


@dataclass
class Vouch:
    """A scheduler's word on a running job whose heartbeat stopped: does its node still run it?

    Asked only then, since it reaches past the controller to the node's own daemon.
    """

    alive: bool | None  # True: the node answers for the job; False: it does not; None: no answer
    reason: str  # what was asked and what came back, for the task's reason


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
    title: ClassVar[str] = ""  # the scheduler's name as people write it, for messages
    # The directive that forbids the scheduler to start the job again after a node failure, a
    # preemption or an administrator's requeue: a cell with side effects must not run twice.
    never_requeue: ClassVar[str] = ""
    job_id_variable: ClassVar[str] = ""  # the job's environment variable holding its id
    restart_variable: ClassVar[str | None] = None  # ... and the one counting its restarts
    # Exit codes the scheduler acts on (e.g. Grid Engine reruns a job that exits with 99):
    # a job never exits with one of these, whatever the cell did.
    reserved_exit_codes: ClassVar[frozenset[int]] = frozenset()

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
               taskdir: str, setup: str, runner: str, array: Array | None = None) -> str:
        """The whole job script, from the host's template or the built-in one.

        With `array`, one script for a job array: `taskdir` is the array's folder, whose
        entry named by an element's index links to that element's task directory, so the
        scheduler's output files and the script's own paths land in the task directories."""
        if not self.never_requeue:
            raise NotImplementedError(f"{type(self).__name__} does not say how to forbid requeues")
        if array is None:
            lines = [*self.resource_lines(resources, name, taskdir), self.never_requeue]
            quoted = shlex.quote(taskdir)
        else:
            element = f"{taskdir}/{self.array_index_pattern}"
            lines = [*self.resource_lines(resources, self.array_name(name, array), element),
                     *self.array_lines(array),
                     *([self.never_requeue] if self.array_never_requeue else [])]
            quoted = f'{shlex.quote(taskdir)}/"${self.array_variable}"'
        directives = "\n".join(f"{self.directive} {line}" for line in lines)
        paths = TaskPaths("")
        fields = {"name": name, "taskdir": quoted,
                  "workdir": f"{quoted}/{paths.work.name}", "directives": directives,
                  "setup": setup, "runner": runner,
                  "exitcode": f"{quoted}/{paths.exitcode.name}"}
        if template is not None:
            return template.format(**fields)
        return "#!/bin/bash\n" + directives + "\n" + DEFAULT_BODY.format(**fields)

    # ------------------------------------------------------------ job arrays
    # A sweep is submitted as ONE job array: element i (counted from `array_base`) runs the
    # task whose directory the array folder's entry `i` links to.

    array_variable: ClassVar[str] = ""  # the environment variable holding an element's index
    array_job_variable: ClassVar[str] = ""  # ... and the one holding the array's own job id
    array_index_pattern: ClassVar[str] = ""  # how an output path in a directive names it
    array_base: ClassVar[int] = 0  # the index of the first element
    # Whether an array takes the never-requeue directive (PBS refuses arrays with it: they
    # are always rerunnable there; the job's own claim still runs each element once).
    array_never_requeue: ClassVar[bool] = True

    def array_lines(self, array: Array) -> list[str]:
        """The directives that make the job an array of `array.count` elements, at most
        `array.limit` (None: no limit) running at once."""
        raise NotImplementedError(f"{self.title or self.name} job arrays are not supported")

    def array_name(self, name: str, array: Array) -> str:
        """The job's name as an array (LSF spells the array into the name itself)."""
        return name

    def element_id(self, job_id: str, index: int) -> str:
        """How the queue names element `index` of array job `job_id`: what status answers
        are keyed by, and what the cancel command takes for that element alone."""
        raise NotImplementedError(f"{self.title or self.name} job arrays are not supported")

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

    # ------------------------------------------------------------ a job gone silent

    def probe_command(self, job_id: str, job: JobState) -> list[str] | None:
        """A command asking the node of this running job whether it still runs it, or None
        where the scheduler has no such question: then the queue's "running" is its word.

        One command per job, run side by side: a dead node makes each wait out its timeout.
        """
        return None

    def read_probe(self, job_id: str, job: JobState, returncode: int, stdout: str,
                   stderr: str) -> Vouch:
        """What the probe's output says about the job."""
        raise NotImplementedError

    def job_exit_code(self, code: int) -> int:
        """The exit code the job reports for a task that ended with `code`: the same, unless
        the scheduler would act on it (the task's own exit-code file keeps the real one)."""
        return 1 if code in self.reserved_exit_codes else code
