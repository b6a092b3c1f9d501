"""A fidelity run: each notebook's cells executed side by side in L, C and the target
kernels, compared cell by cell, several notebooks at a time."""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .cells import read_cells
from .compare import CellReport, NotebookReport, cell_chain, compare_cell, equal_on
from .corpus import cost, notebook_name
from .kernels import SSH_TARGETS, TARGETS, Kernel
from .locate import annotate
from .reads import Reads

DEFAULT_JOBS = 3  # notebooks at once: while a remote cell's task runs, L and C sit idle


def run_notebook(path: Path, targets: Iterable[str] = ("R",), ssh: Any = None,
                 max_cells: int | None = None, timeout: float = 300,
                 workdir: Path | None = None, name: str | None = None,
                 explain: bool = True, prefixes: dict[str, str] | None = None,
                 ) -> NotebookReport:
    """Run one notebook in L, C and each target kernel, cell by cell, and compare.
    `prefixes` adds targets (name: the line put before each code cell), e.g. an identity
    target with prefix "" that must match L on every cell."""
    prefixes = {**TARGETS, **(prefixes or {})}
    targets = tuple(targets)
    name = name or notebook_name(path)
    report = NotebookReport(name, targets)
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="nb-", dir=workdir))
    kernels: dict[str, Kernel] = {}
    try:
        cells = read_cells(path)[:max_cells]
        # One string-hash seed for L, the targets and their tasks, another for C: set and
        # dict orders that follow the seed are then random (L and C differ), not failures.
        seed = random.randrange(1, 2**31)
        for role in ("L", "C", *targets):
            kernels[role] = Kernel(role, base / role, path.parent, ssh,
                                   hash_seed=seed + 1 if role == "C" else seed)
        starts = {role: k.submit(k.start) for role, k in kernels.items()}
        before = {role: f.result() for role, f in starts.items()}
        diverged: dict[str, dict[str, int]] = {t: {} for t in targets}
        reads_of = Reads()
        for cell in cells:
            result = CellReport(cell)
            report.cells.append(result)
            if cell.kind == "empty":
                continue
            reads = reads_of.of(cell.source)
            codes = {role: (prefixes[role] + cell.source if role in targets
                            and cell.kind == "code" else cell.source) for role in kernels}
            futures = {role: k.submit(k.run_cell, codes[role], timeout)
                       for role, k in kernels.items()}
            seen = {role: f.result() for role, f in futures.items()}
            result.seconds = {role: round(s.seconds, 3) for role, s in seen.items()}
            for role, kernel in kernels.items():
                if kernel.noise:
                    report.warnings.append(f"cell {cell.number}, {role}: the snapshot saw "
                                           f"output ({', '.join(kernel.noise)})")
                    kernel.noise.clear()
            for target in targets:
                found, noisy, after = compare_cell(cell, seen, before, target,
                                                    diverged[target], name, reads)
                result.random[target] = noisy
                result.depends[target] = [f"{n} (cell {diverged[target][n]})"
                                          for n in sorted(diverged[target])
                                          if reads is None or reads(n)]
                diverged[target] = after
                if cell.kind == "local-only":
                    result.status[target] = "local-only"
                    continue
                if explain:
                    annotate(found, kernels["L"], kernels[target], target)
                result.differences += found
                if seen[target].ename and seen[target].ename != seen["L"].ename:
                    result.tracebacks[target] = seen[target].traceback
                if found:
                    result.status[target] = "differs"
                    result.chain[target] = cell_chain(found)
                else:
                    result.status[target] = "random" if noisy else "same"
                    result.identical[target] = equal_on(seen["L"], seen[target], noisy)
            before = {role: s.names for role, s in seen.items()}
    except Exception as error:  # a notebook that cannot go on: say why, run the next one
        report.aborted = f"{type(error).__name__}: {error}"
    finally:
        stops = [k.submit(k.shutdown) for k in kernels.values()]
        for stop in stops:
            try:
                stop.result(timeout=60)
            except Exception:
                pass
        shutil.rmtree(base, ignore_errors=True)
    report.seconds = time.monotonic() - started
    return report


def run_many(paths: list[Path], targets: Iterable[str] | Callable[[Path], tuple[str, ...]]
             = ("R",), jobs: int = DEFAULT_JOBS, progress: Any = None,
             **options: Any) -> list[NotebookReport]:
    """Run notebooks, `jobs` at a time, each with `targets` (or `targets(path)`: one run can
    compare some notebooks over SSH too, sharing their L and C); `progress(report)` is called
    as each notebook ends."""
    chosen = targets if callable(targets) else (lambda path, fixed=tuple(targets): fixed)
    ssh, tmp = None, Path(tempfile.mkdtemp(prefix="fidelity-"))
    lock = threading.Lock()
    try:
        if any(SSH_TARGETS.keys() & set(chosen(path)) for path in paths):
            from remote_magic.testing.sshd import start_sshd

            ssh = start_sshd(tmp / "sshd")

        def one(path: Path) -> NotebookReport:
            report = run_notebook(path, chosen(path), ssh=ssh, workdir=tmp, **options)
            if progress is not None:
                with lock:
                    progress(report)
            return report

        # the longest notebooks first, so that the last one to end is a short one
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            futures = {path: pool.submit(one, path) for path in sorted(paths, key=cost)}
            return [futures[path].result() for path in paths]
    finally:
        if ssh is not None:
            ssh.stop()
        shutil.rmtree(tmp, ignore_errors=True)
