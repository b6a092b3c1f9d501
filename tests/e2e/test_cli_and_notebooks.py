"""The command line, and every notebook in notebooks/ executed headless."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from helpers import REPO
from nbclient import NotebookClient

from remote_magic import RemoteExecutor

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "remote_magic.cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_hosts_test_status_kill_purge(home: Path) -> None:
    assert "localhost" in cli("hosts").stdout
    test = cli("test", "localhost")
    assert test.returncode == 0 and "[ok]" in test.stdout and "FAIL" not in test.stdout
    with RemoteExecutor() as pool:
        pool.submit(pow, 3, 3).result(timeout=30)
    status = cli("status", "--all")
    assert "completed" in status.stdout
    task_id = status.stdout.splitlines()[1].split()[0]
    assert "already completed" in cli("kill", task_id).stdout
    assert f"{task_id}: removed" in cli("purge", task_id).stdout
    assert "No tasks" in cli("status", "--all").stdout


def test_cli_errors_are_messages(home: Path) -> None:
    unknown = cli("test", "nowhere")
    assert unknown.returncode == 1 and "Unknown host 'nowhere'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert "No task" in cli("kill", "abcdef").stderr
    assert "--older" in cli("purge").stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, home: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(home)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
