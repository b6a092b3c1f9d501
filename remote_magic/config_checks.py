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

from .config_yaml import KeyPath
from .errors import OptionError

SCHEDULERS = ("process", "slurm", "pbs", "lsf", "sge")
RESOURCE_KEYS = ("walltime", "cores", "mem", "nodes", "gpus", "partition", "account")

# Formats the schedulers share: [days-]hours:minutes:seconds (or fewer fields), and an amount of
# memory with an optional K/M/G/T/P unit. They are checked, not converted: the scheduler layer
# writes them out in its own dialect.
_WALLTIME_RE = re.compile(r"(?:\d+-)?\d+(?::\d{1,2}){0,2}")
_MEMORY_RE = re.compile(r"\d+(?:\.\d+)?\s*(?:[KMGTP]i?B?|B)?", re.IGNORECASE)


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
        label = str(key)
        hint = did_you_mean(label, valid)
        raise Invalid(
            f"unknown key {label!r}{hint} Valid keys here: {', '.join(valid)}", (*where, label)
        )


def did_you_mean(word: Any, choices: tuple[str, ...] | list[str]) -> str:
    """A sentence-ending fragment: `; did you mean 'x'?` or `.` when nothing is close."""
    if isinstance(word, str):
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
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{kind} ({shown})"


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


def port(value: Any, where: KeyPath) -> int:
    return whole(value, where, 1, 65535)


def scheduler(value: Any, where: KeyPath) -> str:
    name = text(value, where).strip().lower()
    if name not in SCHEDULERS:
        raise Invalid(
            f"unknown scheduler {value!r}{did_you_mean(name, SCHEDULERS)} "
            f"Use one of: {', '.join(SCHEDULERS)}",
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
        key = (*where, str(local))
        if not isinstance(local, str) or not local.strip():
            raise Invalid(f"a local path prefix must be a non-empty string, not {show(local)}",
                           key)
        result[local] = text(remote, key)
    return result


def walltime(value: Any, where: KeyPath) -> str | int:
    if isinstance(value, str) and _WALLTIME_RE.fullmatch(value.strip()):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise Invalid(
        f"must be a duration such as \"1:00:00\" (hours:minutes:seconds), \"2-00:00:00\" "
        f"(days-hours:minutes:seconds) or a whole number of minutes, not {show(value)}",
        where,
    )


def memory(value: Any, where: KeyPath) -> str | int:
    if isinstance(value, str) and _MEMORY_RE.fullmatch(value.strip()):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise Invalid(
        f"must be an amount such as \"4G\", \"500M\" or a whole number of megabytes, "
        f"not {show(value)}",
        where,
    )


def amount(value: Any, where: KeyPath) -> str | int:
    """An amount of data like `memory`, where 0 turns the feature off."""
    if value == 0 and not isinstance(value, bool):
        return 0
    try:
        return memory(value, where)
    except Invalid:
        raise Invalid(f"must be an amount such as \"100M\" or \"1G\" (0 turns it off), "
                      f"not {show(value)}", where) from None


_RESOURCE_CHECKS: dict[str, Callable[[Any, KeyPath], Any]] = {
    "walltime": walltime,
    "cores": whole,
    "mem": memory,
    "nodes": whole,
    "gpus": whole,
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
        raise OptionError(f"resource '{'.'.join(exc.where)}' {exc.message}") from None
