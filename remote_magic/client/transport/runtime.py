"""What a host needs to run tasks, shipped as one zip file: our host side, the wire, cloudpickle.

Hosts often have no internet access, so nothing is installed there with pip: the kernel sends
the code it already has. Python imports pure-Python packages straight from a zip on
PYTHONPATH, so the runtime is a single file, uploaded under a temporary name and renamed, and
named by a hash of its contents so that kernels of different versions never collide.

A file under a predictable name in a directory is only as trustworthy as whoever can write
there, so the runtime is never run on its name alone: `check_command` first checks, with none
of our code on the path, that the work directory and the runtime are the user's alone and that
the runtime's content hash is the one this kernel built.

Python cannot cache the bytecode of modules it imports from a zip, so it compiles them at every
start: an agent took 150 ms to import from sources here, against 70 ms with bytecode. So each
module travels with its bytecode for this kernel's Python, made without a timestamp (zip
entries carry a fixed date) and unchecked (the zip's hash is checked already); a host with
another version of Python finds the bytecode's magic number wrong, ignores it, and compiles the
source as before.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import io
import os
import py_compile
import shlex
import tempfile
import textwrap
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import cloudpickle

import remote_magic

from ...wire.taskdir import path_problem, trust_problem

UNSAFE = 96  # exit status of the check: another user could have written there (JSON follows)
MISSING = 97  # the runtime is not there yet: ship it
DAMAGED = 98  # a file of that name is there, with other content: ship it again
UNSAFE_MARK = "RM-UNSAFE "

# What runs on a host, relative to the package: the agent, the runner, the schedulers, and the
# wire they share with the kernel. tests/host/test_host_side.py imports all of it from the zip.
SHIPPED = ("__init__.py", "errors.py", "host", "wire")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip entries get a fixed date: same code, same hash


@lru_cache(maxsize=1)
def runtime_zip() -> tuple[str, bytes]:
    """(file name, bytes) of the runtime for this version of the code."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, \
            tempfile.TemporaryDirectory() as scratch:
        for path, name in _shipped_files():
            _add(archive, name, path.read_bytes())
            _add(archive, name + "c", _bytecode(path, name, os.path.join(scratch, "pyc")))
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:12]
    return f"remote_magic-{remote_magic.__version__}-{digest}.zip", data


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, _FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def _bytecode(path: Path, name: str, scratch: str) -> bytes:
    """The module's .pyc as zipimport reads it next to `name`: its code objects name the file
    `name` (the host's path is not known here)."""
    py_compile.compile(str(path), scratch, dfile=name, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    return Path(scratch).read_bytes()


def _shipped_files() -> list[tuple[Path, str]]:
    """Our host side and wire, and all of cloudpickle: the kernel side would be dead weight."""
    ours = Path(remote_magic.__file__).resolve().parent
    theirs = Path(cloudpickle.__file__).resolve().parent
    paths = [ours / name for name in SHIPPED if name.endswith(".py")]
    paths += [path for name in SHIPPED if not name.endswith(".py")
              for path in (ours / name).rglob("*.py")]
    found = [(path, f"{ours.name}/{path.relative_to(ours).as_posix()}") for path in paths]
    found += [(path, f"{theirs.name}/{path.relative_to(theirs).as_posix()}")
              for path in theirs.rglob("*.py")]
    return sorted(found, key=lambda pair: pair[1])


def runtime_sha256() -> str:
    return hashlib.sha256(runtime_zip()[1]).hexdigest()


_CHECK_MAIN = f"""
import hashlib, json, os, sys
workdir, name, want = sys.argv[1:4]
problem = trust_problem(workdir, [("runtime", "dir"), ("agent.log", "owned"),
                                  ("runtime/" + name, "file")], create=True)
if problem is not None:
    print({UNSAFE_MARK!r} + json.dumps(problem))
    sys.exit({UNSAFE})
digest = hashlib.sha256()
try:
    with open(os.path.join(os.path.realpath(workdir), "runtime", name), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
except FileNotFoundError:
    sys.exit({MISSING})
sys.exit(0 if digest.hexdigest() == want else {DAMAGED})
"""


@lru_cache(maxsize=1)
def check_script() -> str:
    """The check's Python source: the very functions the agent checks its work directory with
    (taskdir.py), without their docstrings, so that both always agree."""
    functions = []
    for function in (path_problem, trust_problem):
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            del body[0]
        functions.append(ast.unparse(tree))
    return "from __future__ import annotations\n" + "\n".join(functions) + _CHECK_MAIN


def check_command(python: str, workdir: str) -> str:
    """A shell command that exits 0 when the runtime in `workdir` (a shell word) can be run,
    else UNSAFE, MISSING or DAMAGED. It creates a missing work directory, private (0700).

    `-I -S`: nothing from the user's environment or site-packages takes part in the check.
    """
    name, _ = runtime_zip()
    return (f"{shlex.quote(python)} -I -S -c {shlex.quote(check_script())} {workdir} "
            f"{shlex.quote(name)} {runtime_sha256()}")


def unsafe_problem(output: str) -> dict[str, Any] | None:
    """The problem the check printed (after whatever a login shell printed), if any."""
    import json

    for line in reversed(output.splitlines()):
        if line.startswith(UNSAFE_MARK):
            try:
                return json.loads(line[len(UNSAFE_MARK):])
            except ValueError:
                return None
    return None
