"""The agent, a task's supervisor and its runner can be told apart (and killed apart) by name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers.waiting import wait_for

from remote_magic.client.core import Client
from remote_magic.client.prepare import TaskOptions, prepare_cell
from remote_magic.wire.taskdir import TaskPaths, read_json

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="process names are a Linux feature")


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def parent(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def test_keeper_and_runner_have_names_of_their_own(home: Path) -> None:
    client = Client()
    try:
        options = TaskOptions(nowait=True)
        prepared = prepare_cell("import time\ntime.sleep(30)", {}, client.host(), options)
        record = client.submit(prepared).record
        paths = TaskPaths(record.remote_dir)
        assert wait_for(lambda: read_json(paths.pids) is not None, 10)
        pids = read_json(paths.pids)
        assert pids["keeper"] and comm(pids["supervisor"]) == "rm-keeper"
        assert wait_for(lambda: comm(pids["runner"]) == f"rm-task-{record.id[:7]}", 10)
        assert parent(pids["runner"]) == pids["supervisor"]
        warm = parent(pids["supervisor"])  # the keeper: forked by the warm process (warm.py)
        assert comm(warm) == "rm-warm"
        assert comm(parent(warm)) == "rm-agent"
        client.kill([record])
    finally:
        client.close()
