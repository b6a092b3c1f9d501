"""How a target kernel's run of a cell differs from the local kernel's (L), told apart from
randomness by the local control kernel (C), and the per-cell and per-notebook records of it.

The aspects compared are the outcome (error type), stdout, the displays (their kinds and MIME
types, in order), and the fingerprints of user names and files. A target differing from L on
an aspect where L and C agree is a *deterministic* difference: a fidelity failure unless
``known_differences.yaml`` accepts it; where L and C differ too, the aspect is *random*
(timings, unseeded generators, hash-seed order) and proves nothing either way. A difference is
*first* in its chain when the cell reads nothing that already differed, *downstream* when it
reads or changes something that did, *inherited* when a name differing since an earlier cell
was left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .cells import Cell
from .kernels import Observation
from .text import describe_text, outcome, shorten

ASPECTS = ("error", "names", "value", "files", "stdout", "displays")
COUNTS = ("counted", "same", "random", "random, equal to L", "differs", "first", "downstream",
          "inherited", "local-only")


@dataclass
class Difference:
    notebook: str
    cell: int
    target: str
    aspect: str  # error | names | value | files | stdout | displays
    description: str
    name: str = ""  # for names, value and files (file:<path>)
    chain: str = ""  # first | downstream | inherited
    origin: int = 0  # for name-level differences: the cell where this name began to differ
    accepted: str = ""  # the reason from known_differences.yaml


@dataclass
class CellReport:
    cell: Cell
    status: dict[str, str] = field(default_factory=dict)  # target: same|random|differs|...
    chain: dict[str, str] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)
    random: dict[str, list[str]] = field(default_factory=dict)  # aspects where L and C differ
    tracebacks: dict[str, str] = field(default_factory=dict)
    depends: dict[str, list[str]] = field(default_factory=dict)  # differing names it reads
    identical: dict[str, bool] = field(default_factory=dict)  # equal to L even where random
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class NotebookReport:
    name: str
    targets: tuple[str, ...]
    cells: list[CellReport] = field(default_factory=list)
    aborted: str = ""
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # the harness's own doubts

    def counts(self, target: str) -> dict[str, int]:
        counts = dict.fromkeys(COUNTS, 0)
        for report in self.cells:
            status = report.status.get(target)
            if status is None:
                continue
            if status == "local-only":
                counts["local-only"] += 1
                continue
            counts["counted"] += 1
            counts[status] += 1
            if status == "random" and report.identical.get(target):
                counts["random, equal to L"] += 1
            if status == "differs":
                counts[report.chain[target]] += 1
        return counts


def compare_cell(cell: Cell, seen: dict[str, Observation], before: dict[str, dict],
                 target: str, diverged: dict[str, int], notebook: str,
                 reads: Any = None) -> tuple[list[Difference], list[str], dict[str, int]]:
    """Differences of `target` from L for one cell, the aspects that are random (L differs
    from C there), and the names that differ deterministically afterwards (name: the cell
    where it began to differ). `reads(name)` says whether the cell may read a name (None:
    assume it reads everything); it separates new chains from their consequences."""
    L, C, T = seen["L"], seen["C"], seen[target]
    found: list[Difference] = []
    noisy: list[str] = []

    def differ(aspect: str, description: str, name: str = "") -> None:
        found.append(Difference(notebook, cell.number, target, aspect, description, name))

    if L.ename != C.ename:
        noisy.append("error")
    elif L.ename != T.ename:
        differ("error", f"L: {outcome(L)} vs {target}: {outcome(T)}")
    if L.stdout != C.stdout:
        noisy.append("stdout")
    elif L.stdout != T.stdout:
        differ("stdout", describe_text(L.stdout, T.stdout, target))
    if L.displays != C.displays:
        noisy.append("displays")
    elif L.displays != T.displays:
        differ("displays", f"L: {shorten(L.displays)} vs {target}: {shorten(T.displays)}")
    after: dict[str, int] = {}
    absent = ("absent", "")
    for name in sorted(set(L.names) | set(T.names) | set(C.names)):
        aspect = "files" if name.startswith("file:") else "value"
        if L.names.get(name, absent)[0] != C.names.get(name, absent)[0]:
            # randomness this cell made; a value that was random before and that the cell
            # left alone (an earlier timestamp) is not the cell's, and an unseeded global
            # generator is no output at all (it matters once seeded, when L and C agree)
            if not name.startswith("<") and any(
                    before[role].get(name) != seen[role].names.get(name) for role in "LC"):
                noisy.append(f"{aspect}:{name}")
            continue
        if L.names.get(name, absent)[0] == T.names.get(name, absent)[0]:
            continue
        if name not in L.names or name not in T.names:
            where = "missing in " + (target if name in L.names else "L")
            shown = L.names.get(name) or T.names[name]
            differ("names" if aspect == "value" else aspect, f"{where} ({shown[1]})", name)
        else:
            differ(aspect, f"L: {L.names[name][1]} vs {target}: {T.names[name][1]}", name)
        after[name] = diverged.get(name, cell.number)
    depends = [name for name in diverged if reads is None or reads(name)]
    for difference in found:
        name = difference.name
        difference.origin = diverged.get(name, cell.number) if name else 0
        if name in diverged:
            changed = [role for role in ("L", target)
                       if before[role].get(name) != seen[role].names.get(name)]
            if not changed:
                difference.chain = "inherited"
                continue
            # a value that already differed and that this cell changed (perhaps without
            # naming it: a method call, a class-level cache): say on which side
            difference.chain = "downstream"
            difference.description += (f" (differing since cell {difference.origin}; this "
                                       f"cell changed it in {' and '.join(changed)})")
        else:
            difference.chain = "downstream" if depends else "first"
    return found, noisy, after


def equal_on(left: Observation, right: Observation, aspects: list[str]) -> bool:
    """Do two kernels agree on these aspects ("stdout", "value:x", ...)?"""
    def part(seen: Observation, aspect: str) -> Any:
        if aspect in ("error", "stdout", "displays"):
            return getattr(seen, "ename" if aspect == "error" else aspect)
        return seen.names.get(aspect.split(":", 1)[1])

    return all(part(left, a) == part(right, a) for a in aspects)


def cell_chain(found: list[Difference]) -> str:
    chains = {d.chain for d in found}
    return next(c for c in ("first", "downstream", "inherited") if c in chains)
