"""The text report of a fidelity run: figures per notebook and target, their totals, then
every deterministic difference with what it reads and the target's traceback."""

from __future__ import annotations

from collections.abc import Iterable

from .compare import COUNTS, Difference, NotebookReport
from .kernels import TARGET_NAMES


def format_counts(counts: dict[str, int]) -> str:
    return (f"{counts['same']}/{counts['counted']} cells the same, {counts['random']} random "
            f"({counts['random, equal to L']} equal to L anyway), "
            f"{counts['local-only']} local-only; {counts['differs']} differ "
            f"({counts['first']} first, {counts['downstream']} downstream, "
            f"{counts['inherited']} inherited)")


def render(reports: list[NotebookReport], seconds: float | None = None,
           only: Iterable[str] | None = None) -> str:
    """The report: figures per notebook and in total, then every deterministic difference
    (of the targets `only`, if given)."""
    present = {t for r in reports for t in r.targets}
    targets = sorted(present if only is None else present & set(only))
    reports = [r for r in reports if set(r.targets) & set(targets)]
    out = ["Fidelity: L = local kernel, C = local control kernel, "
           + ", ".join(f"{t} = {TARGET_NAMES.get(t, 'test target')}" for t in targets),
           "A cell is the same when its error type, names, values, files, stdout and displays "
           "match L's; random when L and C differ (not a failure).", ""]
    totals = {t: dict.fromkeys(COUNTS, 0) for t in targets}
    for report in reports:
        out.append(f"{report.name}  ({report.seconds:.1f} s)")
        if report.aborted:
            out.append(f"  ABORTED after {len(report.cells)} cells: {report.aborted}")
        out += [f"  harness warning: {w}" for w in report.warnings]
        for target in (t for t in report.targets if t in targets):
            counts = report.counts(target)
            for k, v in counts.items():
                totals[target][k] += v
            out.append(f"  {target}: {format_counts(counts)}")
    out.append("")
    for target in targets:
        notebooks = sum(target in r.targets for r in reports)
        out.append(f"TOTAL {target} ({notebooks} notebooks): {format_counts(totals[target])}")
    if seconds is not None:
        out.append(f"run time {seconds:.1f} s")
    listed = [(r, c) for r in reports for c in r.cells
              if any(d.target in targets for d in c.differences)]
    if listed:
        out += ["", "Deterministic differences (L and C agree, the target does not). first: a "
                "new difference in a cell that reads nothing that already differed; downstream: "
                "new differences in a cell that reads names, files or generators that already "
                "differed, or that changes a value that already differed; inherited: names that "
                "already differed and this cell left alone."]
    for report, cell in listed:
        by_target: dict[str, list[Difference]] = {}
        for d in cell.differences:
            if d.target in targets:
                by_target.setdefault(d.target, []).append(d)
        for target, found in by_target.items():
            chain = cell.chain[target]
            head = f"{report.name} cell {cell.cell.number} [{target}, {chain}"
            old = [d for d in found if d.chain == "inherited"]
            new = [d for d in found if d.chain != "inherited"]
            still = ", ".join(f"{d.name} (cell {d.origin})" for d in old)
            if chain == "inherited":
                accepted = " (accepted)" if all(d.accepted for d in found) else ""
                out.append(f"{head}] `{cell.cell.first_line}`: still differing: {still}"
                           f"{accepted}")
                continue
            out.append(f"{head}] `{cell.cell.first_line}`")
            if chain == "downstream" and cell.depends.get(target):
                out.append(f"    reads what already differed: {', '.join(cell.depends[target])}")
            for d in new:
                label = d.aspect + (f" {d.name}" if d.name else "")
                note = f"  [accepted: {d.accepted}]" if d.accepted else ""
                out.append(f"    {label}: {d.description}{note}")
            if old:
                out.append(f"    still differing: {still}")
            if target in cell.tracebacks:
                out.append(f"    {target} traceback:")
                lines = cell.tracebacks[target].strip().splitlines()
                if len(lines) > 25:
                    lines = lines[:5] + ["…"] + lines[-19:]
                out += ["      " + line for line in lines]
    return "\n".join(out) + "\n"
