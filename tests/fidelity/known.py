"""The differences known_differences.yaml accepts: its entries read and checked, matched to a
run's differences, and the ones no entry covers listed."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .compare import ASPECTS, Difference, NotebookReport
from .text import clip

KNOWN = Path(__file__).resolve().parent / "known_differences.yaml"


def load_known(path: Path = KNOWN) -> list[dict[str, Any]]:
    import yaml

    if not path.exists():
        return []
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("differences") or []
    for entry in entries:
        missing = {"notebook", "cell", "aspect", "reason"} - set(entry)
        if missing:
            raise ValueError(f"{path}: entry {entry} lacks {', '.join(sorted(missing))}")
        if entry["aspect"] not in (*ASPECTS, "*"):
            raise ValueError(f"{path}: entry {entry}: aspect must be one of {ASPECTS} or *")
    return entries


def _matches(entry: dict[str, Any], notebook: str, cell: int, target: str, aspect: str,
             name: str) -> bool:
    return (fnmatch.fnmatch(notebook, entry["notebook"]) and int(entry["cell"]) == cell
            and entry.get("target", target) == target
            and entry["aspect"] in ("*", aspect)
            and entry.get("name", name) == name)


def mark_accepted(reports: list[NotebookReport], known: list[dict[str, Any]]) -> None:
    """Set `accepted` on each difference an entry covers; an inherited name difference is
    covered when the difference where that name began to differ is."""
    for report in reports:
        for cell in report.cells:
            for d in cell.differences:
                d.accepted = ""
                for entry in known:
                    if _matches(entry, d.notebook, d.cell, d.target, d.aspect, d.name) or (
                            d.chain == "inherited" and any(
                                _matches(entry, d.notebook, d.origin, d.target, aspect, d.name)
                                for aspect in ("names", "value"))):
                        d.accepted = str(entry["reason"])
                        break


def unaccepted(reports: list[NotebookReport], only: Iterable[str] | None = None,
               ) -> list[Difference]:
    targets = None if only is None else set(only)
    return [d for r in reports for c in r.cells for d in c.differences
            if not d.accepted and (targets is None or d.target in targets)]


def list_unaccepted(missing: list[Difference], where: str) -> str:
    """One line per difference known_differences.yaml lacks; the inherited ones (a name
    still differing since an earlier cell listed here) only counted."""
    own = [d for d in missing if d.chain != "inherited"]
    lines = [f"{len(missing)} deterministic differences not in known_differences.yaml "
             f"(the report: {where}):"]
    lines += [f"{d.notebook} cell {d.cell} [{d.target}, {d.chain}] {d.aspect}"
              f"{' ' + d.name if d.name else ''}: {clip(d.description, 300)}" for d in own]
    inherited = len(missing) - len(own)
    if inherited:
        lines.append(f"and {inherited} inherited: names still differing in later cells "
                     "because of the differences above")
    return "\n".join(lines)
