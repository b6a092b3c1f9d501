"""Hosts for tests: an isolated store and work directory, SSH hosts on the sshd fixture, batch
task directories made by the agent, and a count of the kernel's status requests."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest


def isolate(root: Path, monkeypatch: Any) -> Path:
    config = root / "hosts.yaml"
    config.write_text(f"hosts:\n  localhost:\n    workdir: {root / 'work'}\n")
    monkeypatch.setenv("REMOTE_MAGIC_HOME", str(root / "data"))
    monkeypatch.setenv("REMOTE_MAGIC_CONFIG", str(config))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    from remote_magic.client import core

    monkeypatch.setattr(core, "_client", None)
    return root


def stage_batch_task(agent: Any, code: str, task: str) -> Any:
    """A task directory holding `code` with no inputs, made through the agent's own
    operation, ready for `op_submit` (the batch tests' way to make one)."""
    from remote_magic.wire.serialization import dump_namespace
    from remote_magic.wire.taskdir import TaskPaths, write_json

    paths = TaskPaths(agent.op_mkdir(task))
    dump_namespace({}, paths.inputs)
    write_json(paths.spec, {"code": code, "filename": "<cell>", "inputs": [], "outputs": [],
                            "imports": {}, "last_expression": False})
    return paths


def count_status_requests(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many tasks each agent `status` request covers, from now on in this test."""
    from remote_magic.client.agent_client import AgentClient

    asked: list[int] = []
    call = AgentClient.call

    def counting(self: AgentClient, op: str, args: dict[str, Any], *rest: Any,
                 **options: Any) -> Any:
        if op == "status":
            asked.append(len(args["tasks"]))
        return call(self, op, args, *rest, **options)

    monkeypatch.setattr(AgentClient, "call", counting)
    return asked


TRANSPORT = "paramiko"  # set per test run by the ssh_transport fixture (tests/conftest.py)


def ssh_host(server: Any, name: str, workdir: Path, **extra: str) -> str:
    """YAML for a host reaching `server` by key over the run's SSH transport, for
    start_kernel or a hosts file."""
    settings = {"address": f"{server.user}@{server.host}", "port": server.port,
                "identity_file": server.key_path, "known_hosts": server.known_hosts,
                "python": sys.executable, "workdir": workdir, "transport": TRANSPORT, **extra}
    lines = [f"  {name}:"] + [f"    {key}: {value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def settled(remote_dir: str, timeout: float = 10) -> None:
    """Wait until the task's supervisor is done with it: the kernel hears of a task's end from
    its runner, while the supervisor still writes the exit code and checks the state; a test
    that damages those files must wait for it. A keeper outlives its tasks (until the warm
    process renews its imports): for its tasks, the exit code is its last write."""
    import os

    from helpers.waiting import wait_for
    from remote_magic.wire.taskdir import TaskPaths, read_json

    pids = read_json(TaskPaths(remote_dir).pids)

    def gone() -> bool:
        if pids.get("keeper"):
            return TaskPaths(remote_dir).exitcode.exists()
        try:
            os.kill(pids["supervisor"], 0)
        except ProcessLookupError:
            return True
        return False

    assert pids is None or wait_for(gone, timeout)
