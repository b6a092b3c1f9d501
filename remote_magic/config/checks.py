"""Checks of the values a hosts file (or a cell's options) may hold.

Each check takes the raw YAML value and where it sits, and returns the value to keep or raises
`Invalid` with a message that says what to write instead; the loader adds file and line.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

from ..errors import OptionError, clipped, echo
from ..host.schedulers.units import memory_bytes, walltime_seconds
from .strict_yaml import KeyPath

SCHEDULERS = ("process", "slurm", "pbs", "lsf", "sge")
RESOURCE_KEYS = ("walltime", "cores", "mem", "nodes", "gpus", "partition", "account")

# Formats the schedulers share: [days-]hours:minutes:seconds (or fewer fields), and an amount of
# memory with an optional K/M/G/T/P unit. They are checked here by the same reading the scheduler
# layer uses (schedulers/units.py), which then writes them out in its own dialect; a value it
# would refuse, or that a scheduler would quietly turn into another (SLURM reads a walltime of 0
# as UNLIMITED and wraps one too large to fit its integers), never gets as far as a job.
_WALLTIME_RE = re.compile(r"(?:\d+-)?\d+(?::\d{1,2}){0,2}")
_MEMORY_RE = re.compile(r"\d+(?:\.\d+)?\s*(?:[KMGTP]i?B?|B)?", re.IGNORECASE)
MAX_WALLTIME_DAYS = 365  # longer is a typo, and near where schedulers' minute counts overflow
MAX_MEMORY = 2 ** 60  # an exbibyte: more than any machine has, well inside a 64-bit count
MAX_COUNT = 1_000_000  # cores, nodes or GPUs; more is a typo, not a cluster
_SHORT = 32  # characters: no valid walltime or memory amount is longer


class Invalid(Exception):
    """A problem found while checking; turned into a ConfigError once the file and line are known.
    """

    def __init__(self, message: str, where: KeyPath) -> None:
        super().__init__(message)
        self.message = message
        self.where = where


def reject_unknown_keys(data: Mapping[Any, Any], valid: tuple[str, ...], where: KeyPath) -> None:
    for key in data:
        if isinstance(key, str) and key in valid:
            continue
        label = key if isinstance(key, str) else echo(key, 40)
        hint = did_you_mean(label, valid)
        raise Invalid(
            f"unknown key {echo(label, 40)}{hint} Valid keys here: {', '.join(valid)}",
            (*where, clipped(label, 40)),
        )


def did_you_mean(word: Any, choices: tuple[str, ...] | list[str]) -> str:
    """A sentence-ending fragment: `; did you mean 'x'?` or `.` when nothing is close."""
    if isinstance(word, str) and len(word) <= 2 * max(map(len, choices), default=0):
        close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
        if not close:
            close = [c for c in choices if c.lower() == word.lower()]
        if close:
            return f"; did you mean {close[0]!r}?"
    return "."


def show(value: Any) -> str:
    """Name the YAML type of a value: a wrong type is usually a quoting or indentation slip."""
    if value is None:
        return "null (nothing)"
    if isinstance(value, bool):
        kind = "a boolean"
    elif isinstance(value, int):
        kind = "an integer"
    elif isinstance(value, float):
        kind = "a number"
    elif isinstance(value, str):
        kind = "a string"
    elif isinstance(value, date):
        kind = "a date"
    elif isinstance(value, Mapping):
        kind = "a mapping"
    elif isinstance(value, (list, tuple)):
        kind = "a list"
    else:
        kind = f"a {type(value).__name__}"
    return f"{kind} ({echo(value, 60)})"


def text(value: Any, where: KeyPath) -> str:
    """A non-empty string; empty values would only fail later, far from the file."""
    if not isinstance(value, str):
        hint = ""
        if isinstance(value, (bool, int, float, date)):
            hint = "; put the value in quotes if YAML read it as something else"
        raise Invalid(f"must be a string, not {show(value)}{hint}", where)
    if not value.strip():
        raise Invalid("must not be empty; remove the key to use the default", where)
    return value


def _breaks_directive(value: str) -> bool:
    """Whether a value would not survive a job script's directive line, which the scheduler
    splits on blanks and which ends at a newline."""
    return any(c.isspace() or c in "'\"\\#" for c in value)


def word(value: Any, where: KeyPath) -> str:
    """A partition or account name: it is written into a job script's directive line, where a
    space would split it and a newline would start a command of its own."""
    value = text(value, where)
    if _breaks_directive(value):
        raise Invalid(f"must be one word without spaces, quotes, backslashes or '#', "
                      f"not {show(value)}", where)
    return value


def batch_workdir(value: str, where: KeyPath) -> str:
    """A scheduler reads its output paths from directive lines (``#SBATCH --output=...``),
    split on blanks: a batch host's task directories cannot hold these characters."""
    if _breaks_directive(value):
        raise Invalid(f"{show(value)} cannot hold a batch host's task directories: the "
                      f"scheduler's directive lines cannot take spaces, quotes, backslashes or "
                      f"'#'; choose a directory without them", where)
    return value


def script(value: Any, where: KeyPath) -> str:
    """Shell lines may be empty, but must be text (a YAML block with `|` keeps line breaks)."""
    if not isinstance(value, str):
        raise Invalid(
            f"must be a string of shell lines, not {show(value)}; write it as a block: "
            "'setup: |' followed by indented lines",
            where,
        )
    return value


def whole(value: Any, where: KeyPath, low: int = 1, high: int | None = None) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= low and (high is None or value <= high):
            return value
    span = f"from {low} to {high}" if high is not None else f"of at least {low}"
    hint = ""
    if isinstance(value, str) and value.strip().isdigit():
        hint = "; write it without quotes"
    raise Invalid(f"must be a whole number {span}, not {show(value)}{hint}", where)


_INTERVAL = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*")
_UNIT_SECONDS = {None: 1, "s": 1, "m": 60, "min": 60, "h": 3600}


def interval(value: Any, where: KeyPath) -> float:
    """Seconds, from a number or a string such as "30s", "2m" or "1h": 1 s to 1 h."""
    match = _INTERVAL.fullmatch(value) if isinstance(value, str) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif match:
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    else:
        raise Invalid(f"must be a number of seconds or a time such as \"30s\", \"2m\" or "
                      f"\"1h\", not {show(value)}", where)
    if not 1 <= seconds <= 3600:
        raise Invalid(f"must be from 1 second to 1 hour, not {show(value)}", where)
    return seconds


def switch(value: Any, where: KeyPath) -> bool:
    if isinstance(value, bool):
        return value
    hint = "; write it without quotes" if isinstance(value, str) and \
        value.strip().lower() in ("true", "false") else ""
    raise Invalid(f"must be true or false, not {show(value)}{hint}", where)


def port(value: Any, where: KeyPath) -> int:
    return whole(value, where, 1, 65535)


TRANSPORTS = ("paramiko", "openssh")


def transport(value: Any, where: KeyPath) -> str:
    name = text(value, where).strip().lower()
    if name not in TRANSPORTS:
        raise Invalid(
            f"unknown transport {echo(value, 40)}{did_you_mean(name, TRANSPORTS)} Use "
            "'paramiko' (the default, built in) or 'openssh' (the system's ssh program, with "
            "all of your ~/.ssh/config: ProxyCommand, Match, certificates, ControlMaster)",
            where,
        )
    return name


def scheduler(value: Any, where: KeyPath) -> str:
    name = text(value, where).strip().lower()
    if name in SCHEDULERS:
        return name
    from ..host.schedulers import scheduler_names  # plugins, registered as entry points

    known = scheduler_names()
    if name not in known:
        raise Invalid(
            f"unknown scheduler {echo(value, 40)}{did_you_mean(name, known)} "
            f"Use one of: {', '.join(known)} (others come as plugins: an entry point of the "
            "group 'remote_magic.schedulers')",
            where,
        )
    return name


def paths(value: Any, where: KeyPath) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise Invalid(
            f"must be a mapping from a local path prefix to the matching remote prefix, e.g. "
            f"{{/home/me/project: /scratch/me/project}}, not {show(value)}",
            where,
        )
    result: dict[str, str] = {}
    for local, remote in value.items():
        key = (*where, clipped(str(local) if isinstance(local, str) else echo(local, 40), 60))
        if not isinstance(local, str) or not local.strip():
            raise Invalid(f"a local path prefix must be a non-empty string, not {show(local)}",
                           key)
        result[local] = text(remote, key)
    return result


def walltime(value: Any, where: KeyPath) -> str | int:
    """A time limit a scheduler takes as meant: more than zero, minutes and seconds below 60,
    hours below 24 after a day count, at most MAX_WALLTIME_DAYS."""
    problem = _walltime_problem(value)
    if problem:
        raise Invalid(
            f"{_quoted(value)} is not a valid time ({problem}): write a duration such as "
            f"\"1:00:00\" (hours:minutes:seconds), \"2-00:00:00\" (days-hours:minutes:seconds) "
            f"or a whole number of minutes, up to {MAX_WALLTIME_DAYS} days",
            where,
        )
    return value.strip() if isinstance(value, str) else value


def _walltime_problem(value: Any) -> str:
    """What is wrong with a walltime, in a few words; empty when nothing is."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return "not a duration"
    if isinstance(value, str) and not (len(value) <= _SHORT and
                                       _WALLTIME_RE.fullmatch(value.strip())):
        return "not a duration"
    if isinstance(value, int) and value > MAX_WALLTIME_DAYS * 24 * 60:
        return f"longer than {MAX_WALLTIME_DAYS} days"
    try:
        seconds = walltime_seconds(value)
    except ValueError as exc:  # its message names the field: "...: seconds must be below 60"
        said = str(exc)
        return said.rsplit(": ", 1)[-1] if ": " in said else "it must be longer than zero"
    if seconds > MAX_WALLTIME_DAYS * 86400:
        return f"longer than {MAX_WALLTIME_DAYS} days"
    return ""


def memory(value: Any, where: KeyPath) -> str | int:
    """An amount of memory a scheduler can grant: whole bytes, more than zero, below an
    exbibyte (a larger count wraps around in some schedulers' integers)."""
    problem = ""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (
            isinstance(value, str) and not (len(value) <= _SHORT and
                                            _MEMORY_RE.fullmatch(value.strip()))):
        problem = "not an amount"
    else:
        try:
            size = memory_bytes(value)
        except ValueError as exc:
            problem = "it must be more than zero" if "more than zero" in str(exc) else \
                "it is not a whole number of bytes"
        else:
            if size > MAX_MEMORY:
                problem = "more than any machine has; check the unit"
    if problem:
        raise Invalid(
            f"{_quoted(value)} is not a valid amount of memory ({problem}): write an amount "
            f"such as \"4G\", \"500M\" or a whole number of megabytes",
            where,
        )
    return value.strip() if isinstance(value, str) else value


def _quoted(value: Any) -> str:
    """A resource value as the user wrote it; its type too when it is not text or a number."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return echo(value, 40)
    return show(value)


def count(value: Any, where: KeyPath) -> int:
    """Cores, nodes or GPUs: one at least, and not more than any machine has."""
    return whole(value, where, 1, MAX_COUNT)


def amount(value: Any, where: KeyPath) -> str | int:
    """An amount of data like `memory`, where 0 turns the feature off."""
    if value == 0 and not isinstance(value, bool):
        return 0
    if isinstance(value, str) and len(value) <= _SHORT and _MEMORY_RE.fullmatch(value.strip()) \
            and not any(c in "123456789" for c in value):  # "0M" says off as plainly as 0
        return 0
    try:
        return memory(value, where)
    except Invalid:
        raise Invalid(f"must be an amount such as \"100M\" or \"1G\" (0 turns it off), "
                      f"not {show(value)}", where) from None


_RESOURCE_CHECKS: dict[str, Callable[[Any, KeyPath], Any]] = {
    "walltime": walltime,
    "cores": count,
    "mem": memory,
    "nodes": count,
    "gpus": count,
    "partition": word,
    "account": word,
}
assert tuple(_RESOURCE_CHECKS) == RESOURCE_KEYS


def resources(value: Any, where: KeyPath) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise Invalid(
            f"must be a mapping such as {{partition: normal, walltime: \"1:00:00\"}}, "
            f"not {show(value)}",
            where,
        )
    reject_unknown_keys(value, RESOURCE_KEYS, where)
    return {
        key: _RESOURCE_CHECKS[key](raw, (*where, key))
        for key, raw in value.items()
        if raw is not None
    }


def check_resources(values: Mapping[str, Any]) -> dict[str, Any]:
    """Resources given on a cell or to an executor, checked by the hosts file's own rules.

    A bad value must be refused before the task is prepared, not by a scheduler later.
    """
    try:
        return resources(values, ())
    except Invalid as exc:
        key = ".".join(exc.where)
        said = f"{key} {exc.message}" if key in RESOURCE_KEYS else f"resources: {exc.message}"
        raise OptionError(said) from None


NAME_MAX = 255  # bytes in one file name component (Linux, macOS and most file systems)
PATH_MAX = 4096  # bytes in a whole path


def collect_patterns(patterns: list[str]) -> list[str]:
    """`--collect` patterns checked before anything runs, in the form both globbers read alike.

    A pattern is matched on the host after the task ended: one refused only then would waste
    the run and leave its results half-loaded. The kernel's globber (pathlib) refuses what the
    agent's (glob) quietly reads another way (`out**` as `out*`), so such patterns are refused
    here; `./` and doubled slashes are dropped, as both would drop them.
    """
    tidy = []
    for pattern in patterns:
        parts = [p for p in pattern.split("/") if p not in ("", ".")]
        problem = ""
        if not pattern.strip():
            problem = "it is empty"
        elif "\0" in pattern:
            problem = "a file name cannot contain a NUL character"
        elif pattern.startswith(("/", "~")):
            problem = "give it relative to the task's working directory"
        elif ".." in parts:
            problem = "'..' would leave the task's working directory"
        elif any("**" in p and p != "**" for p in parts):
            problem = ("'**' (any depth of folders) must be a whole part of the path, as in "
                       "out/**/*.csv; for names that start with out, write out*")
        elif not parts:
            problem = "it names no file; '**' collects everything"
        elif len(pattern.encode("utf-8", "surrogateescape")) > PATH_MAX or any(
                len(p.encode("utf-8", "surrogateescape")) > NAME_MAX for p in parts):
            problem = "no file can have a name that long"
        if problem:
            raise OptionError(f"--collect {echo(pattern)}: {problem}.")
        tidy.append("/".join(parts))
    return tidy
