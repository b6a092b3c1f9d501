"""The notebook corpus (corpus/<project>/<name>.ipynb): its notebooks by pattern, their names
as known_differences.yaml writes them, their cost, and the subset the SSH test runs."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path

from .cells import read_cells

CORPUS = Path(__file__).resolve().parent / "corpus"
SSH_SUBSET_CELLS = 60  # code cells the SSH test runs at least


def notebook_name(path: Path) -> str:
    """project/name.ipynb for a corpus notebook (the form known_differences.yaml uses)."""
    path = path.resolve()
    try:
        return str(path.relative_to(CORPUS))
    except ValueError:
        return f"{path.parent.name}/{path.name}"


def corpus_notebooks(patterns: Iterable[str] = ("*",), corpus: Path = CORPUS) -> list[Path]:
    """The corpus's notebooks (corpus/<project>/<name>.ipynb) whose relative path matches."""
    patterns = list(patterns)
    found = []
    for path in sorted(corpus.glob("*/*.ipynb")):
        relative = str(path.relative_to(corpus))
        if any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(relative, p + ".ipynb")
               for p in patterns):
            found.append(path)
    return found


def ssh_subset(paths: list[Path], cells: int = SSH_SUBSET_CELLS) -> list[Path]:
    """The part of the corpus the SSH test runs: whole notebooks, the shortest of each
    project first, one project after the other in turn, until they hold `cells` code cells."""
    by_project: dict[str, list[tuple[int, Path]]] = {}
    for path in sorted(paths):
        by_project.setdefault(path.parent.name, []).append((-cost(path), path))
    for project in by_project.values():
        project.sort()
    chosen: list[Path] = []
    total = 0
    while total < cells and any(by_project.values()):
        for project in sorted(by_project):
            if by_project[project] and total < cells:
                size, path = by_project[project].pop(0)
                chosen.append(path)
                total += size
    return sorted(chosen)


def cost(path: Path) -> int:
    """Minus the number of code cells (a sort key: most first)."""
    try:
        return -sum(c.kind == "code" for c in read_cells(path))
    except Exception:
        return 0
