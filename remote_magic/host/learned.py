"""The modules a host's tasks import, remembered so that the warm runner imports them first.

A cell that imports scikit-learn pays about a second for it in a fresh process. The runner
reports what each task imported; the warm process (see warm.py) imports those modules once,
before any task needs them, and every task forked from it finds them already loaded.

Only installed code is learned (the standard library and site-packages): a module from the
notebook's folder or from a path the user edits would be imported stale. Libraries known not
to survive `fork` after import are never learned, and one that starts a thread while it is
imported is found out and left out from then on (`unsafe`).
"""

from __future__ import annotations

import functools
import json
import os
import site
import sys
import sysconfig
from pathlib import Path
from typing import Any

from ..wire.taskdir import write_atomic

MAX_NAMES = 200  # learned module names kept per work directory, most recently used first
MAX_REPORT = 3800  # bytes of one task's report: one atomic pipe write (PIPE_BUF is 4096)
MAX_DEPTH = 2  # `sklearn.linear_model` is learned; its private submodules come with it
FILE = "warm.json"

# Libraries that start threads, initialise MPI or a GPU runtime, or open connections when
# imported, or whose authors say they break in a child forked after import.
DENIED = frozenset({
    "tensorflow", "torch", "jax", "jaxlib", "cupy", "pycuda", "mpi4py", "ray", "pyspark",
    "grpc", "distributed", "dask_cuda", "numba", "tensorrt", "paddle", "mxnet", "horovod",
    "remote_magic", "cloudpickle", "__main__",
})


@functools.lru_cache(maxsize=1)
def installed_roots() -> tuple[str, ...]:
    """Folders of installed code: the standard library and the site-packages."""
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    try:
        roots.update(site.getsitepackages())
        roots.add(site.getusersitepackages())
    except AttributeError:  # a virtualenv's old site.py
        pass
    return tuple(sorted(os.path.join(os.path.realpath(r), "") for r in roots if r))


@functools.lru_cache(maxsize=1)
def _stdlib() -> str:
    return os.path.join(os.path.realpath(sysconfig.get_paths()["stdlib"]), "")


def learnable(names: list[str], roots: tuple[str, ...]) -> list[str]:
    """Of the modules a task imported, those a warm process may import for the next tasks:
    installed packages and their public subpackages (`sklearn.linear_model`), and top-level
    standard modules; top-level names first."""
    stdlib = _stdlib()
    found = []
    for name in names:
        parts = name.split(".")
        if len(parts) > MAX_DEPTH or parts[0] in DENIED or \
                any(part.startswith("_") for part in parts):
            continue
        where = getattr(sys.modules.get(name), "__file__", None)
        if not isinstance(where, str):  # built in, frozen, or a namespace package
            continue
        where = os.path.realpath(where)
        if where.startswith(roots) and not (len(parts) > 1 and where.startswith(stdlib)
                                            and "-packages" not in where):
            found.append(name)
    return sorted(found, key=lambda n: (n.count("."), n))


def report(names: list[str]) -> bytes:
    """One line naming the modules, cut to fit one atomic pipe write."""
    line, size = [], len(b"learn\n")
    for name in names:
        size += len(name) + 1
        if size > MAX_REPORT:
            break
        line.append(name)
    return ("learn " + " ".join(line) + "\n").encode()


class Learned:
    """The learned names of one work directory, in `warm.json` there (written atomically)."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / FILE
        self.names: list[str] = []
        self.unsafe: set[str] = set()
        try:
            data: Any = json.loads(self.path.read_text())
            self.names = [n for n in data.get("modules", []) if isinstance(n, str)][:MAX_NAMES]
            self.unsafe = {n for n in data.get("unsafe", []) if isinstance(n, str)}
        except (OSError, ValueError, AttributeError):  # none yet, or damaged: learn afresh
            pass

    def add(self, names: list[str]) -> tuple[list[str], int]:
        """Record a task's modules: returns the new ones, and how many older ones were
        dropped to stay within MAX_NAMES."""
        wanted = [n for n in names if n not in self.unsafe and n.split(".")[0] not in DENIED]
        new = [n for n in wanted if n not in self.names]
        self.names = wanted + [n for n in self.names if n not in wanted]
        dropped = max(0, len(self.names) - MAX_NAMES)
        del self.names[MAX_NAMES:]
        if new or dropped:
            self.save()
        return new, dropped

    def mark_unsafe(self, name: str) -> None:
        self.unsafe.add(name)
        self.names = [n for n in self.names if n != name and not n.startswith(name + ".")]
        self.save()

    def save(self) -> None:
        try:
            write_atomic(self.path, json.dumps({"modules": self.names,
                                                "unsafe": sorted(self.unsafe)}))
        except OSError:  # a full disk: the warm process still knows; the next one relearns
            pass
