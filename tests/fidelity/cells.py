"""A notebook's code cells as the harness runs them: numbered as In [n] of a fresh
top-to-bottom run, and each sent through ``%%remote``, kept local (IPython syntax) or empty."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .text import clip


@dataclass
class Cell:
    number: int  # 1-based among code cells: In [number] of a fresh top-to-bottom run
    source: str
    kind: str  # "code" (sent through %%remote), "local-only" (IPython syntax), "empty"

    @property
    def first_line(self) -> str:
        lines = [ln for ln in self.source.splitlines() if ln.strip()]
        return clip(lines[0].strip() if lines else "", 70)


def read_cells(path: Path) -> list[Cell]:
    import nbformat

    notebook = nbformat.read(str(path), as_version=4)
    cells = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        source = cell.source
        kind = "empty" if not source.strip() else (
            "local-only" if ipython_only(source) else "code")
        cells.append(Cell(len(cells) + 1, source, kind))
    return cells


def ipython_only(source: str) -> bool:
    """Does the cell use IPython syntax (%magic, !shell, %%cell magic, ?help, x = !cmd)?
    IPython's own transformer tells: the cell changes beyond the cosmetic clean-up."""
    from IPython.core.inputtransformer2 import TransformerManager

    full = TransformerManager()
    plain = TransformerManager()
    plain.line_transforms, plain.token_transformers = [], []
    try:
        return full.transform_cell(source) != plain.transform_cell(source)
    except Exception:
        return False
