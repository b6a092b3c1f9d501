"""Our resource formats (walltime, memory, counts) read into numbers each scheduler can print,
and the JSON some schedulers answer with. Standard library only: it runs on the login node."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from typing import Any

_WALLTIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([KMGTP])I?B?|(B))?", re.IGNORECASE)
_UNIT_POWER = {"K": 1, "M": 2, "G": 3, "T": 4, "P": 5}


def walltime_seconds(value: Any) -> int:
    """Our walltime (see config.py) as seconds, so each scheduler can write its own format.

    A bare number is minutes. The string forms follow Slurm, where the format comes from:
    "M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S". Minutes and seconds after the first field
    must be below 60, so that a typo is refused instead of silently becoming a longer limit.
    """
    if isinstance(value, bool):
        raise ValueError(f"walltime must be a duration, not {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"walltime must be at least one minute, not {value!r}")
        return value * 60
    text = value.strip() if isinstance(value, str) else None
    match = _WALLTIME.fullmatch(text) if text else None
    if match is None:
        raise ValueError(
            f"walltime {value!r} is not a duration such as \"1:00:00\", \"2-00:00:00\" "
            "or a number of minutes"
        )
    days, first, second, third = match.groups()
    if days is not None:
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
        if hours >= 24:
            raise ValueError(f"walltime {value!r}: hours after the days must be below 24")
        hours += 24 * int(days)
    elif third is not None:
        hours, minutes, seconds = int(first), int(second), int(third)
    else:
        hours, minutes, seconds = 0, int(first), int(second or 0)
    if (days is not None or third is not None) and minutes >= 60:
        raise ValueError(f"walltime {value!r}: minutes must be below 60")
    if (second is not None or third is not None) and seconds >= 60:
        raise ValueError(f"walltime {value!r}: seconds must be below 60")
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"walltime {value!r} must be longer than zero")
    return total


def memory_bytes(value: Any) -> int:
    """Our memory amount (see config.py) as bytes; a bare number is megabytes.

    K/M/G/T/P are binary multiples with or without "i" and "B", like the schedulers' own units.
    A fraction that does not come to whole bytes is refused rather than rounded.
    """
    if isinstance(value, bool):
        raise ValueError(f"mem must be an amount of memory, not {value!r}")
    if isinstance(value, int):
        amount = Fraction(value) * 1024**2
    else:
        match = _MEMORY.fullmatch(value.strip()) if isinstance(value, str) else None
        if match is None:
            raise ValueError(
                f"mem {value!r} is not an amount such as \"8G\", \"500M\" or a number of megabytes"
            )
        number, unit, plain_bytes = match.groups()
        power = 0 if plain_bytes else _UNIT_POWER[unit.upper()] if unit else 2
        amount = Fraction(number) * 1024**power
    if amount.denominator != 1:
        raise ValueError(f"mem {value!r} is not a whole number of bytes")
    if amount <= 0:
        raise ValueError(f"mem {value!r} must be more than zero")
    return int(amount)


def positive_count(resources: dict[str, Any], key: str) -> int | None:
    """A count such as cores or nodes; zero or a negative would ask the scheduler for nothing."""
    value = resources.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a whole number of at least 1, not {value!r}")
    return value


_SAFE_WORD = re.compile(r"[^\s'\"\\#]+")


def directive_word(resources: dict[str, Any], key: str) -> str | None:
    """A queue or account name, which must survive being written into a directive line."""
    value = resources.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not _SAFE_WORD.fullmatch(value):
        raise ValueError(
            f"{key} {value!r} cannot be written in a job script directive: it must be one word "
            "without quotes, backslashes or '#'"
        )
    return value


def extract_json(output: str) -> Any:
    """The JSON document in a command's output, or None when there is none.

    The agent may hand over stdout with warnings or stderr lines around it (qstat prints
    "Unknown Job Id" lines, LSF prints "Please wait ..." lines), so only the outermost
    braces are parsed. `strict=False` lets through raw control characters, which PBS has been
    seen to copy unescaped from job attributes into its JSON.
    """
    start, end = output.find("{"), output.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        return json.loads(output[start:end + 1], strict=False)
    except ValueError as exc:
        raise ValueError(f"the scheduler's answer is not valid JSON: {exc}") from None


def queue_lines(resources: dict[str, Any], queue_flag: str, account_flag: str) -> list[str]:
    """The queue (our `partition`) and account lines, in one scheduler's flags."""
    lines = []
    for key, flag in (("partition", queue_flag), ("account", account_flag)):
        word = directive_word(resources, key)
        if word:
            lines.append(f"{flag} {word}")
    return lines


_INDEX_RANGE = re.compile(r"(\d+)(?:-(\d+)(?::(\d+))?)?")


def index_list(text: str) -> list[int]:
    """The indices of a task list as Grid Engine (and PBS) print them: "3", "5-100:1",
    "1,3,6-9:3". Anything else raises ValueError (an answer not to be trusted)."""
    indices: list[int] = []
    for part in text.split(","):
        found = _INDEX_RANGE.fullmatch(part.strip())
        if found is None:
            raise ValueError(f"not a task index list: {text!r}")
        first, last, step = found.groups()
        if last is None:
            indices.append(int(first))
        else:
            indices.extend(range(int(first), int(last) + 1, int(step or 1) or 1))
    return indices
