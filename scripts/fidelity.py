"""Run the differential fidelity harness on the notebook corpus and print its report.

    .venv/bin/python scripts/fidelity.py                  # all notebooks, %%remote on localhost
    .venv/bin/python scripts/fidelity.py --ssh-subset     # and the SSH subset: what pytest runs
    .venv/bin/python scripts/fidelity.py --ssh            # every notebook over loopback SSH too
    .venv/bin/python scripts/fidelity.py --notebook 'pandas*/*' --cells 10
    .venv/bin/python scripts/fidelity.py --notebook /tmp/my.ipynb

Exit status 1 when a deterministic difference is not accepted in
tests/fidelity/known_differences.yaml, 2 when a notebook could not be run to its end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fidelity.compare import NotebookReport  # noqa: E402
from fidelity.corpus import CORPUS, SSH_SUBSET_CELLS, corpus_notebooks, ssh_subset  # noqa: E402
from fidelity.known import KNOWN, load_known, mark_accepted, unaccepted  # noqa: E402
from fidelity.report import format_counts, render  # noqa: E402
from fidelity.run import DEFAULT_JOBS, run_many  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", action="append", default=[], metavar="GLOB",
                        help="corpus notebooks to run (relative to tests/fidelity/corpus, "
                             "e.g. 'proj/*'), or a path to a .ipynb; repeatable; default all")
    parser.add_argument("--cells", type=int, default=None, metavar="N",
                        help="run only the first N code cells of each notebook")
    parser.add_argument("--ssh", action="store_true", help="also run S and O: %%%%remote -q hpc "
                        "over SSH to a private sshd on loopback, through paramiko (S) and "
                        "OpenSSH (O)")
    parser.add_argument("--ssh-only", action="store_true", help="run S and O but not R")
    parser.add_argument("--ssh-subset", action="store_true",
                        help="R on every notebook, S and O too on the SSH subset (as the "
                        "tests)")
    parser.add_argument("--subset", action="store_true",
                        help=f"only the SSH subset (>= {SSH_SUBSET_CELLS} code cells)")
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS,
                        help="notebooks run at once (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per cell")
    parser.add_argument("--report", type=Path, default=None, help="also write the report here")
    parser.add_argument("--corpus", type=Path, default=CORPUS,
                        help="the corpus folder (default %(default)s)")
    parser.add_argument("--known", type=Path, default=KNOWN,
                        help="accepted differences (default %(default)s)")
    args = parser.parse_args(argv)

    paths = select(args.notebook, args.corpus)
    if args.subset:
        paths = ssh_subset(paths)
    if not paths:
        print("no notebooks matched", file=sys.stderr)
        return 2
    fixed = ("S", "O") if args.ssh_only else ("R", "S", "O") if args.ssh else ("R",)
    subset = set(ssh_subset(paths)) if args.ssh_subset else set()

    def targets(path: Path) -> tuple[str, ...]:
        return ("R", "S", "O") if path in subset else fixed

    print(f"running {len(paths)} notebook(s), targets {', '.join(fixed)}"
          + (f", S and O too on {len(subset)}" if subset else ""), file=sys.stderr)

    def progress(report: NotebookReport) -> None:
        figures = "; ".join(f"{t}: {format_counts(report.counts(t))}"
                            for t in report.targets)
        aborted = f" ABORTED: {report.aborted.splitlines()[0]}" if report.aborted else ""
        print(f"  {report.name} ({report.seconds:.1f} s) {figures}{aborted}", file=sys.stderr)

    started = time.monotonic()
    reports = run_many(paths, targets, jobs=args.jobs, progress=progress,
                       max_cells=args.cells, timeout=args.timeout)
    mark_accepted(reports, load_known(args.known))
    text = render(reports, time.monotonic() - started)
    print(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
    if unaccepted(reports):
        return 1
    return 2 if any(r.aborted for r in reports) else 0


def select(patterns: list[str], corpus: Path) -> list[Path]:
    paths: list[Path] = []
    globs = []
    for pattern in patterns:
        if pattern.endswith(".ipynb") and Path(pattern).exists():
            paths.append(Path(pattern).resolve())
        else:
            globs.append(pattern)
    if globs or not patterns:
        paths += corpus_notebooks(globs or ["*"], corpus)
    return paths


if __name__ == "__main__":
    sys.exit(main())
