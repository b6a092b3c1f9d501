"""How the harness writes what it saw in one line of a report: clipped text, a kernel's
outcome, a run of displays, the first line where two outputs part."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .kernels import Observation


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def outcome(seen: Observation) -> str:
    return "ok" if seen.ename is None else clip(f"{seen.ename}: {seen.evalue}", 100)


def shorten(items: list[str]) -> str:
    """A list of displays, a repeated run written once with its count: [a, b] × 9."""
    for period in range(1, min(4, len(items) // 2) + 1):
        unit = items[:period]
        repeats = len(items) // period
        if repeats > 1 and unit * repeats == items[:period * repeats]:
            rest = items[period * repeats:]
            return f"[{', '.join(unit)}] × {repeats}" + (f" + [{', '.join(rest)}]" if rest
                                                           else "")
    return f"[{', '.join(items)}]"


def describe_text(left: str, right: str, target: str) -> str:
    a, b = left.splitlines(keepends=True), right.splitlines(keepends=True)
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"line {i + 1}: L: {clip(repr(x), 90)} vs {target}: {clip(repr(y), 90)}"
    longer, extra = ("L", a[len(b):]) if len(a) > len(b) else (target, b[len(a):])
    return (f"{longer} has {len(extra)} more line(s) ({len(a)} vs {len(b)}), "
            f"first: {clip(repr(extra[0]), 100)}")
