"""The transport for hosts on this machine: the agent is a child process on pipes.

Staging is a hard link (a copy across file systems), and results are read in place, so a
large array is never copied on its way in or out. Reading in place is only safe in a place
nobody else can write: the work directory and the task's directory are checked first.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable

import remote_magic

from ...config.hosts import HostConfig
from ...errors import TransportError
from ...host.fileops import disk_full, no_room
from ...wire.protocol import MARKER
from ...wire.serialization import Pickled
from ...wire.taskdir import (
    RESULT_FILES,
    TASKS,
    Refusal,
    TaskPaths,
    task_path,
    trust_problem,
    valid_task_id,
    workdir_message,
)
from ...wire.tempnames import part_tag, temp_beside
from ..agent_client import AgentClient
from ..paths import data_dir
from . import Collected, Staged, collect_found, inline_payload, stage_plan

INLINE_MAX = 256 * 1024  # a task whose files are all this small is sent, not linked


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
        return self.workdir / task_path(task_id)

    def agent(self) -> AgentClient:
        """The running agent, started on first use and restarted if it died."""
        with self._lock:
            if self._agent is None or not self._agent.alive:
                self._agent = AgentClient(_PipeChannel(self._command(), self.host.name),
                                          self._on_event, self.host.name)
            return self._agent

    def _command(self) -> list[str]:
        argv = [self.python, "-m", "remote_magic.host.agent", "--workdir", str(self.workdir),
                *([] if self.host.warm else ["--cold"]),
                *(["--allocation", self.host.allocation] if self.host.allocation else [])]
        if not self.host.setup.strip():
            return argv
        script = f"{self.host.setup}\nexec {shlex.join(argv)}"
        return ["bash", "-l", "-c", script]

    def _trusted(self, task_id: str | None = None) -> None:
        """Refuse a work directory that another user could have written, as the agent does:
        the kernel reads results here in place, and unpickles them. With `task_id`, the task's
        directory (0700) and its result files are checked too."""
        inside = [(TASKS, "dir")]
        if task_id is not None:
            task = task_path(task_id)
            inside += [(task, "private"), *((f"{task}/{name}", "owned") for name in RESULT_FILES)]
        problem = trust_problem(str(self.workdir), inside, create=True)
        if problem is not None:
            raise TransportError(workdir_message(problem, self.host.name))

    def stage(self, task_id: str, source: Path, names: list[str],
              extra: list[tuple[Path, str]] = (), start: bool = False,
              streams: Mapping[str, Pickled] | None = None) -> Staged:
        """Put the prepared files of a task into its directory on the host.

        They are linked into a staging directory of the agent's, which it puts in place whole;
        a directory left by an earlier run of the same task (it failed, or was cancelled) is
        replaced then, while one the identical task of another kernel is running in is kept,
        and this kernel attaches to it (see host/fileops).
        """
        self._trusted()
        agent = self.agent()
        inside, outside, _ = stage_plan(source, names, extra)
        if not outside and not streams and all(
                local == source / name and local.stat().st_size <= INLINE_MAX
                for local, name in inside):
            # A small task travels in the request and is put in place by it: one round trip.
            _, files, payload = inline_payload(source, names, INLINE_MAX)
            answer = agent.call("stage", {"task": valid_task_id(task_id), "files": files,
                                          "size": len(payload), "commit": True,
                                          "start": start, "push": False}, payload)[0]
            return Staged(answer["root"], answer.get("started"))
        # Hard links take no room: a disk without it is found out by the copies, if any.
        answer = agent.request("stage", task=valid_task_id(task_id), files=[])
        if answer.get("existing"):
            return Staged(answer["root"])
        staging = self.workdir / answer["staging"]
        writing = staging.parent  # where a full disk would be (the tasks folder)
        try:
            for local, name in inside:
                _place(local, staging / name)
            for name, stream in (streams or {}).items():  # (prepared for a remote host)
                stream.write(staging / name)
            for local, destination in outside:  # copied: the task may edit them
                writing = Path(os.path.expanduser(destination)).parent
                _copy_file(local, Path(os.path.expanduser(destination)))
            return Staged(agent.request("commit", task=task_id,
                                        staging=answer["staging"])["root"])
        except BaseException as exc:
            try:
                agent.request("unstage", task=task_id, staging=answer["staging"], timeout=10)
            except Exception:  # noqa: BLE001 - the first error is the one to report
                shutil.rmtree(staging, ignore_errors=True)
            if disk_full(exc):
                needed = sum(_size(local) for local, _ in [*inside, *outside])
                raise TransportError(Refusal(no_room(
                    writing, needed, f"task {task_id}", exc,  # type: ignore[arg-type]
                    self.workdir)).for_host(self.host.name)) from None
            raise

    def share(self, local: Path, name: str) -> None:
        """Put inputs that the elements of a sweep share into the host's `shared` folder
        (which the agent made, private, when asked whether it holds them)."""
        self._trusted()
        _copy_file(local, self.workdir / "shared" / name)

    def keep_results(self, task_id: str, listing: list[dict[str, Any]], payload: bytes) -> None:
        """Nothing to keep: results are read in place here (and never pushed)."""

    def collect(self, task_id: str, patterns: list[str], dest: Path) -> Collected:
        """Copy the files of the task's working directory that match `patterns` into `dest`
        (found by the agent, as on any host: no link loops, a cap on matches and time); a
        name that would land outside `dest` is refused and listed."""
        self._trusted(task_id)
        found = self.agent().request("glob", task=valid_task_id(task_id), patterns=patterns)
        work = TaskPaths(self.task_dir(task_id)).work
        return collect_found(found, patterns, dest, lambda name, target: _copy_file(
            work / name, target))

    def fetch(self, task_id: str, name: str, target: Path) -> None:
        self._trusted(task_id)
        _copy_file(TaskPaths(self.task_dir(task_id)).work / name, target)

    def sent_inputs(self, task_id: str, target: Path) -> None:
        self._trusted(task_id)
        _copy_file(TaskPaths(self.task_dir(task_id)).inputs, target)

    def checks(self) -> Iterator[tuple[str, bool | None, str]]:
        """On this machine there is no SSH to check: the agent's own start tells everything."""
        return iter(())

    def retry_delay(self) -> float:
        """No connection to reopen here: the session keeps its own back-off."""
        return 0.0

    def setup(self) -> str:
        return f"{self.host.name} runs tasks on this machine with {self.python}: nothing to ship"

    def results(self, task_id: str, local: Path) -> TaskPaths:
        """Where the task's result files can be read: in place, on this machine, once they
        are known to be this user's alone (in the task's own 0700 directory)."""
        self._trusted(task_id)
        return TaskPaths(self.task_dir(task_id))

    def close(self) -> None:
        with self._lock:
            if self._agent is not None:
                self._agent.close()
                self._agent = None


def _copy_file(source: Path, target: Path) -> None:
    """Copy under a temporary name, then rename: the target is never half-written, and a
    copy that fails (a full disk) leaves nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(target, part_tag())
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _place(source: Path, target: Path) -> None:
    """A task file into the staging directory: a hard link (no copy of a large array), or a
    copy across file systems. The staging directory is renamed into place whole, so no
    temporary name is needed here."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class _PipeChannel:
    def __init__(self, argv: list[str], label: str) -> None:
        env = dict(os.environ)
        package_parent = str(Path(remote_magic.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, env.get("PYTHONPATH")) if p)
        log_dir = data_dir() / "logs"
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._log_path = log_dir / f"agent-{label}.log"
        try:  # private whatever the umask: what a task printed to stderr may end up there
            fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with open(fd, "ab") as log:
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
