"""How the kernel reaches a host: its agent, staging in, and results back out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Protocol

from ..agent_client import AgentClient
from ..config import HostConfig
from ..taskdir import TaskPaths


class Transport(Protocol):
    """What the core needs of a host, whether it is this machine or one behind SSH."""

    host: HostConfig
    notes: list[str]

    def agent(self) -> AgentClient: ...

    def stage(self, task_id: str, source: Path, names: list[str],
              extra: list[tuple[Path, str]] = ...) -> str:
        """Put the task's files (and `--files`: local path, destination) on the host."""

    def results(self, task_id: str, local: Path) -> TaskPaths:
        """Where the finished task's result files can be read on this machine."""

    def collect(self, task_id: str, patterns: list[str], dest: Path) -> list[str]:
        """Copy files matching `patterns` in the task's working directory into `dest`."""

    def fetch(self, task_id: str, name: str, target: Path) -> None:
        """Copy one file of the task's working directory to `target`, atomically."""

    def setup(self) -> str: ...

    def checks(self) -> Iterator[tuple[str, bool | None, str]]:
        """Steps of `remote-magic test`: (step, ok, detail); ok None is a warning."""

    def retry_delay(self) -> float:
        """Seconds until the host may be tried again after failures to reach it (0: now)."""

    def close(self) -> None: ...


def open_transport(host: HostConfig, on_event: Callable[[dict[str, Any]], None]) -> Transport:
    """The transport for `host`; nothing is started until the first request. `on_event`
    hears the agent's pushed events (a task ended, the connection closed)."""
    if host.is_local:
        from .local import LocalTransport

        return LocalTransport(host, on_event)
    from .ssh import SSHTransport

    return SSHTransport(host, on_event)
