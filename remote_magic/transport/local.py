"""The transport for hosts on this machine: the agent is a child process on pipes.

Staging is a hard link (a copy across file systems), and results are read in place, so a
large array is never copied on its way in or out.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import remote_magic

from ..agent_client import AgentClient
from ..config import HostConfig
from ..errors import TransportError
from ..paths import data_dir
from ..protocol import MARKER
from ..taskdir import TaskPaths, make_task_dir, valid_task_id


class LocalTransport:
    def __init__(self, host: HostConfig, on_event: Callable[[dict[str, Any]], None]) -> None:
        self.host = host
        self._on_event = on_event
        self.workdir = Path(os.path.expanduser(host.workdir)).absolute()
        self.python = host.python or sys.executable
        self._agent: AgentClient | None = None
        self._lock = threading.Lock()
        self.notes: list[str] = []

    def task_dir(self, task_id: str) -> Path:
        return self.workdir / "tasks" / valid_task_id(task_id)

    def agent(self) -> AgentClient:
        """The running agent, started on first use and restarted if it died."""
        with self._lock:
            if self._agent is None or not self._agent.alive:
                self._agent = AgentClient(_PipeChannel(self._command(), self.host.name),
                                          self._on_event, self.host.name)
            return self._agent

    def _command(self) -> list[str]:
        argv = [self.python, "-m", "remote_magic.agent", "--workdir", str(self.workdir)]
        if not self.host.setup.strip():
            return argv
        script = f"{self.host.setup}\nexec {shlex.join(argv)}"
        return ["bash", "-l", "-c", script]

    def stage(self, task_id: str, source: Path, names: list[str],
              extra: list[tuple[Path, str]] = ()) -> str:
        """Put the prepared files of a task into its directory on the host.

        A directory left by an earlier run of the same task (it failed, or was cancelled)
        is replaced: its state files would otherwise speak for the new run.
        """
        shutil.rmtree(self.task_dir(task_id), ignore_errors=True)
        paths = make_task_dir(self.task_dir(task_id))
        for name in names:
            target = paths.root / name
            tmp = paths.root / f".{name}.staging"
            try:
                os.link(source / name, tmp)
            except OSError:
                shutil.copyfile(source / name, tmp)
            os.replace(tmp, target)
        for local, destination in extra:  # the user's files are copied: the task may edit them
            _copy_file(local, Path(os.path.expanduser(destination)) if destination.startswith(
                ("/", "~")) else paths.root / destination)
        return str(paths.root)

    def collect(self, task_id: str, patterns: list[str], dest: Path) -> list[str]:
        work = TaskPaths(self.task_dir(task_id)).work
        names = sorted({str(p.relative_to(work)) for pattern in patterns
                        for match in work.glob(pattern)
                        for p in ([match] if match.is_file() else match.rglob("*"))
                        if p.is_file()})
        for name in names:
            _copy_file(work / name, dest / name)
        return names

    def fetch(self, task_id: str, name: str, target: Path) -> None:
        _copy_file(TaskPaths(self.task_dir(task_id)).work / name, target)

    def checks(self) -> Iterator[tuple[str, bool | None, str]]:
        """On this machine there is no SSH to check: the agent's own start tells everything."""
        return iter(())

    def retry_delay(self) -> float:
        """No connection to reopen here: the monitor keeps its own back-off."""
        return 0.0

    def setup(self) -> str:
        return f"{self.host.name} runs tasks on this machine with {self.python}: nothing to ship"

    def results(self, task_id: str, local: Path) -> TaskPaths:
        """Where the task's result files can be read: in place, on this machine."""
        return TaskPaths(self.task_dir(task_id))

    def close(self) -> None:
        with self._lock:
            if self._agent is not None:
                self._agent.close()
                self._agent = None


def _copy_file(source: Path, target: Path) -> None:
    """Copy under a temporary name, then rename: the target is never half-written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


class _PipeChannel:
    def __init__(self, argv: list[str], label: str) -> None:
        env = dict(os.environ)
        package_parent = str(Path(remote_magic.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, env.get("PYTHONPATH")) if p)
        log_dir = data_dir() / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log_path = log_dir / f"agent-{label}.log"
        try:
            with open(self._log_path, "ab") as log:
                self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=log, env=env,
                                              bufsize=0, start_new_session=True)
        except OSError as exc:
            raise TransportError(f"cannot start the agent for {label} ({argv[0]}): {exc}. "
                                 "Check the host's 'python' setting.") from exc
        self._out = self._proc.stdout.fileno()  # type: ignore[union-attr]
        self._leftover = self._await_marker()

    def _await_marker(self) -> bytes:
        seen = b""
        while MARKER not in seen:
            data = os.read(self._out, 65536)
            if not data:
                raise TransportError(f"the agent did not start: {self.describe_failure()}")
            seen += data
        return seen.split(MARKER, 1)[1]

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        fd = self._proc.stdin.fileno()  # type: ignore[union-attr]
        while view:
            view = view[os.write(fd, view):]

    def recv(self) -> bytes:
        if self._leftover:
            data, self._leftover = self._leftover, b""
            return data
        return os.read(self._out, 1 << 20)

    def close(self) -> None:
        try:
            self._proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()

    def describe_failure(self) -> str:
        code = self._proc.poll()
        try:
            tail = self._log_path.read_text(errors="replace").strip().splitlines()[-3:]
        except OSError:
            tail = []
        detail = f"exit code {code}" if code is not None else "its output closed"
        return "; ".join([detail, *tail])
