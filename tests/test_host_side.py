"""What runs on a host imports nothing heavy: the agent and the runner start for every
connection and every task, and a host may have none of the kernel's packages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every module that runs on a host (the agent, its file and batch operations, the runner and
# what it loads, the schedulers) and the wire between both sides.
HOST_SIDE = [
    "agent", "agent_batch", "agent_files", "ambient", "changes", "displays", "errors",
    "importhooks", "pickling", "proctitle", "protocol", "reporting", "runner", "serialization",
    "taskdir", "tempnames", "schedulers", "schedulers.base", "schedulers.job",
    "schedulers.lsf", "schedulers.pbs", "schedulers.sge", "schedulers.slurm",
    "schedulers.units",
]
HEAVY = ["IPython", "ipywidgets", "ipykernel", "paramiko", "yaml", "platformdirs", "zmq",
         "numpy", "matplotlib", "pandas", "jupyter_client", "nbformat"]


def test_every_host_side_module_imports_without_the_kernels_packages() -> None:
    script = (
        "import importlib, json, sys\n"
        f"for name in {HOST_SIDE!r}:\n"
        "    importlib.import_module('remote_magic.' + name)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, "
                           f"{str(ROOT)!r})\n" + script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
