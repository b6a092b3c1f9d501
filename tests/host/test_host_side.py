"""What runs on a host is the runtime zip, and it imports nothing heavy: the agent and the runner
start for every connection and every task, and a host may have none of the kernel's packages."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from remote_magic.client.core import Client
from remote_magic.client.prepare import TaskOptions, prepare_cell
from remote_magic.client.transport.runtime import runtime_zip
from remote_magic.wire.taskdir import TaskPaths

HEAVY = ["IPython", "ipywidgets", "ipykernel", "paramiko", "yaml", "platformdirs", "zmq",
         "numpy", "matplotlib", "pandas", "jupyter_client", "nbformat"]
KERNEL_SIDE = ("remote_magic/client/", "remote_magic/notebook/", "remote_magic/config/",
               "remote_magic/testing/", "remote_magic/cli.py")
# Imported only by matplotlib itself (it is the tasks' matplotlib backend), never by our code.
BACKEND = "remote_magic.host.mpl_backend"


def our_modules(names: list[str]) -> list[str]:
    modules = []
    for name in names:
        if name.startswith("remote_magic/") and name.endswith(".py"):
            module = name[:-3].replace("/", ".")
            modules.append(module.removesuffix(".__init__"))
    return sorted(modules)


def test_the_runtime_holds_the_host_side_and_the_wire_only() -> None:
    names = zipfile.ZipFile(io.BytesIO(runtime_zip()[1])).namelist()
    assert not [n for n in names if n.startswith(KERNEL_SIDE)]
    modules = our_modules(names)
    for needed in ("remote_magic.host.agent", "remote_magic.host.runner",
                   "remote_magic.host.schedulers.job", "remote_magic.wire.taskdir",
                   "remote_magic.errors"):
        assert needed in modules
    assert {n.split("/")[0] for n in names} == {"remote_magic", "cloudpickle"}


def test_every_module_of_the_runtime_imports_from_it_alone_without_heavy_packages(
        tmp_path: Path) -> None:
    name, data = runtime_zip()
    archive = tmp_path / name
    archive.write_bytes(data)
    modules = [m for m in our_modules(zipfile.ZipFile(archive).namelist()) if m != BACKEND]
    script = (
        "import importlib, json, sys\n"
        f"sys.path.insert(0, {str(archive)!r})\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(archive)!r}), module.__file__\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    # -I -S: no site-packages, so the zip is all there is of ours (and of cloudpickle)
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def _import_from(archive: Path, tmp_path: Path) -> str:
    """Where the agent's code says it was compiled from, imported from `archive` alone."""
    script = (f"import sys; sys.path.insert(0, {str(archive)!r})\n"
              "import remote_magic.host.agent as agent\n"
              "print(agent.main.__code__.co_filename)\n")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_runtime_brings_bytecode_and_a_host_with_another_python_ignores_it(
        tmp_path: Path) -> None:
    """Each module comes with its .pyc (a zip's modules are otherwise compiled at every start);
    bytecode of another version of Python (a wrong magic number) is passed over for the source."""
    name, data = runtime_zip()
    archive = tmp_path / name
    archive.write_bytes(data)
    names = zipfile.ZipFile(archive).namelist()
    sources = [n for n in names if n.endswith(".py")]
    assert sorted(n for n in names if n.endswith(".pyc")) == sorted(n + "c" for n in sources)
    assert _import_from(archive, tmp_path) == "remote_magic/host/agent.py"  # the bytecode's

    other = tmp_path / "other-python.zip"
    with zipfile.ZipFile(archive) as old, zipfile.ZipFile(other, "w") as new:
        for entry in old.infolist():
            content = old.read(entry)
            if entry.filename.endswith(".pyc"):
                content = b"\x00\x00" + content[2:]  # no Python's magic number
            new.writestr(entry, content)
    assert _import_from(other, tmp_path) == str(other / "remote_magic/host/agent.py")


def test_a_task_runs_from_the_runtime_alone_and_reports_the_cells_lines_not_the_runners(
        home: Path, tmp_path: Path) -> None:
    """A host with nothing but the zip runs a task from a notebook that used NumPy's global
    generator (whose state goes with every task, opened only if the task imports NumPy); the
    runner drops its own frames from the cell's traceback, also when it runs from the zip's
    bytecode (whose code names its file relative to the zip)."""
    client = Client()
    saved = np.random.get_state()
    try:
        np.random.seed(5)  # the notebook's generator: its state is an array
        prepared = prepare_cell("def f(x):\n    return 1 / x\nf(0)\n", {},
                                client.host("localhost"), TaskOptions())
    finally:
        np.random.set_state(saved)
    task = tmp_path / "task"
    shutil.copytree(prepared.local_dir, task)
    (task / "work").mkdir()  # as the agent makes it when it puts a task in place
    name, data = runtime_zip()
    archive = tmp_path / name
    archive.write_bytes(data)
    script = (f"import sys; sys.path.insert(0, {str(archive)!r})\n"
              "from remote_magic.host import runner\n"
              "assert runner.__file__.startswith(sys.path[0])\n"
              f"sys.exit(runner.main([{str(task)!r}]))\n")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # the supervisor's: the task's own is recorded
    error = json.loads(TaskPaths(task).error.read_text())
    frames = [line for line in error["traceback"].splitlines() if line.startswith("  File ")]
    assert len(frames) == 2 and all("<remote-cell" in line for line in frames), frames
    assert error["type"] == "ZeroDivisionError"
    client.close()
