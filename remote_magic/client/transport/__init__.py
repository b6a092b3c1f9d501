"""How the kernel reaches a host: its agent, staging in, and results back out."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Protocol

from ...config.hosts import HostConfig
from ...wire.serialization import Pickled
from ...wire.taskdir import TaskPaths
from ..agent_client import AgentClient
from ..files import safe_target

if TYPE_CHECKING:  # paramiko is imported only when a host is reached over SSH
    from .connection import Connection, Target


class SharedConnections:
    """Open SSH connections of one client, one per login target, shared by its sessions: a
    host and the allocations on it (each a session of its own) log in once, so a 2FA code
    is typed once. A connection closes when the last session using it lets go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[Target, tuple[Connection, set[int]]] = {}

    def get(self, target: Target, user: object) -> Connection | None:
        with self._lock:
            found = self._open.get(_login(target))
            if found is None or not found[0].alive:
                return None
            found[1].add(id(user))
            return found[0]

    def add(self, target: Target, user: object, conn: Connection) -> None:
        with self._lock:
            self._open[_login(target)] = (conn, {id(user)})

    def release(self, target: Target, user: object, conn: Connection) -> None:
        """`user` is done with `conn`: closed when nobody else uses it."""
        with self._lock:
            found = self._open.get(_login(target))
            if found is not None and found[0] is conn:
                found[1].discard(id(user))
                if found[1]:
                    return
                del self._open[_login(target)]
        conn.close()


def _login(target: Target) -> Target:
    """What makes two targets one login: all but the host's name in the hosts file."""
    return replace(target, name="")


class Transport(Protocol):
    """What the core needs of a host, whether it is this machine or one behind SSH."""

    host: HostConfig
    notes: list[str]

    def agent(self) -> AgentClient: ...

    def stage(self, task_id: str, source: Path, names: list[str],
              extra: list[tuple[Path, str]] = ..., start: bool = ...,
              streams: Mapping[str, Pickled] | None = ...) -> Staged:
        """Put the task's files (and `--files`: local path, destination; and `streams`: task
        files made in memory, by name) on the host; with `start`, a task that goes in one
        request is started by it too."""

    def share(self, local: Path, name: str) -> None:
        """Send inputs shared by a sweep's elements to the host's `shared` folder."""

    def results(self, task_id: str, local: Path) -> TaskPaths:
        """Where the finished task's result files can be read on this machine."""

    def keep_results(self, task_id: str, listing: list[dict[str, Any]], payload: bytes) -> None:
        """The result files the agent pushed with the task's end, for `results` to use."""

    def collect(self, task_id: str, patterns: list[str], dest: Path) -> Collected:
        """Copy files matching `patterns` in the task's working directory into `dest`."""

    def fetch(self, task_id: str, name: str, target: Path) -> None:
        """Copy one file of the task's working directory to `target`, atomically."""

    def sent_inputs(self, task_id: str, target: Path) -> None:
        """Copy the inputs file the task was sent to `target`, atomically: for inputs that
        were sent from memory and are wanted again here (after a kernel restart)."""

    def setup(self) -> str: ...

    def checks(self) -> Iterator[tuple[str, bool | None, str]]:
        """Steps of `remote-magic test`: (step, ok, detail); ok None is a warning."""

    def retry_delay(self) -> float:
        """Seconds until the host may be tried again after failures to reach it (0: now)."""

    def close(self) -> None: ...


class Staged(NamedTuple):
    """Where a task was staged, and the agent's answer to its start (as to a "start"
    request) when the staging request started it too; None: it is still to be started."""

    root: str
    started: dict[str, Any] | None = None


class Collected(list[str]):
    """The names `collect` copied back (a list of them), and what the user should hear about
    the rest: names refused because they would land outside the folder, and a search that
    stopped early (too many matches, or too long)."""

    def __init__(self, names: Iterable[str] = (), stopped: str | None = None,
                 patterns: Iterable[str] = ()) -> None:
        super().__init__(names)
        self.refused: list[str] = []
        self.stopped = stopped
        self.patterns = list(patterns)

    def notes(self) -> list[str]:
        notes = []
        if self.stopped:
            notes.append(f"--collect {' '.join(self.patterns)} stopped early ({self.stopped}): "
                         f"the {len(self)} files found by then were copied; narrow the "
                         "pattern to get the others")
        if self.refused:
            notes.append("--collect: refused file names from the host that point outside this "
                         f"folder: {', '.join(self.refused)}")
        return notes


def collect_found(found: dict[str, Any], patterns: list[str], dest: Path,
                  copy: Callable[[str, Path], None]) -> Collected:
    """Copy what the agent's `glob` found into `dest` with `copy(name, target)`: a name that
    would land outside `dest` (the host decides the names) is refused and listed, never
    written."""
    collected = Collected(stopped=found.get("stopped"), patterns=patterns)
    for entry in found["files"]:
        name = str(entry.get("name", ""))
        target = safe_target(dest, name)
        if target is None:
            collected.refused.append(name)
            continue
        copy(name, target)
        collected.append(name)
    return collected


def inline_payload(source: Path, names: list[str], limit: int
                   ) -> tuple[list[str], list[dict[str, Any]], bytes]:
    """The task files of at most `limit` bytes, which travel inside the stage request: their
    names, their entries (name, size, hash, as the agent checks them) and their bytes."""
    import hashlib

    small = [n for n in names if (source / n).stat().st_size <= limit]
    data = [(source / n).read_bytes() for n in small]
    files = [{"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
             for n, d in zip(small, data)]
    return small, files, b"".join(data)


def stage_plan(source: Path, names: list[str], extra: Iterable[tuple[Path, str]]
               ) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]], int]:
    """Which files go into the task's directory (local path, name there), which go elsewhere
    on the host (an absolute or `~` destination of `--files`), and the bytes of the first."""
    inside = [(source / name, name) for name in names]
    outside = []
    for local, destination in extra:
        (outside if destination.startswith(("/", "~")) else inside).append((local, destination))
    return inside, outside, sum(local.stat().st_size for local, _ in inside)


def open_transport(host: HostConfig, on_event: Callable[[dict[str, Any]], None],
                   shared: SharedConnections | None = None) -> Transport:
    """The transport for `host`; nothing is started until the first request. `on_event`
    hears the agent's pushed events (a task ended, the connection closed); an SSH host logs
    in through `shared`, where another session may already have."""
    if host.is_local:
        from .local import LocalTransport

        return LocalTransport(host, on_event)
    from .ssh import SSHTransport

    return SSHTransport(host, on_event, shared)
