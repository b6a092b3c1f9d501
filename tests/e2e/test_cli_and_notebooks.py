"""The command line, and every notebook in notebooks/ executed headless."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from helpers import REPO
from helpers.waiting import wait_for
from nbclient import NotebookClient

from remote_magic import RemoteExecutor, __version__
from remote_magic.errors import RemoteTaskError

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


def test_cli_json_log_version_and_exit_codes(home: Path) -> None:
    """Data for scripts (--json), a task's printed output (log), the version, and an exit
    status that says whether what was asked was done."""
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"remote-magic {__version__}"
    hosts = json.loads(cli("hosts", "--json").stdout)
    assert [(h["name"], h["default"], h["scheduler"]) for h in hosts] == \
        [("localhost", True, "process")]
    steps = json.loads(cli("test", "localhost", "--json").stdout)
    assert steps and all(s["ok"] for s in steps) and {"host", "step", "detail"} <= set(steps[0])
    with RemoteExecutor() as pool:
        pool.submit(print, "hello from the task").result(timeout=30)
        sleeping = pool.submit(time.sleep, 60)
        [done] = [r for r in json.loads(cli("status", "--all", "--json").stdout)
                  if r["state"] == "completed"]
        assert done["host"] == "localhost" and done["finished"] >= done["created"]
        assert done["id"] in cli("status").stdout  # finished just now: listed by default
        log = cli("log", done["id"][:8])
        assert log.returncode == 0 and log.stdout == "hello from the task\n"
        assert "a task has no elements" in cli("log", done["id"], "3").stderr
        running = sleeping.task_id  # type: ignore[attr-defined]
        assert wait_for(lambda: "running" in cli("status", running).stdout, 30)
        refused = cli("purge", running)
        assert refused.returncode == 1 and "still running: kill it first" in refused.stdout
        killed = cli("kill", running)
        assert killed.returncode == 0 and f"{running}: cancelling" in killed.stdout
        with pytest.raises(RemoteTaskError, match="cancelled"):
            sleeping.result(timeout=30)
    purged = cli("purge", "--older", "0s")
    assert purged.returncode == 0 and f"{done['id']}: removed" in purged.stdout


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
