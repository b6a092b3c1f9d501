"""The agent's file operations: staging a task in, streaming large files, finding and reading
results, and keeping the work directory free of leftovers.

A task is staged into a directory of its own (`tasks/.stage-ID-TOKEN`), and renamed into place
only once every file arrived whole and verified: a dropped connection or a full disk never
leaves half a task that looks staged. Two kernels staging the identical task at once (same
id, same content) do not trample on each other either: the first complete copy is kept, the
other kernel attaches to it, and whoever claims it first starts it (`claim`), so it runs once
and both get its result. Temporary files go as soon as they fail (a full disk is freed at
once), with the agent when it exits, and, if an agent was killed, with the next one's sweep.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import fnmatch
import glob
import hashlib
import io
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from ..wire.diskwrite import splice_into, write_all
from ..wire.states import FINAL_STATES, State
from ..wire.taskdir import (
    Refusal,
    TaskPaths,
    make_task_dir,
    path_problem,
    read_json,
    read_state,
    valid_task_id,
)
from ..wire.tempnames import part_tag, temp_beside, temp_prefix
from .exchange import Exchange, FileRange

CHUNK = 4 * 1024 * 1024  # bytes per streamed frame
STAGE_PREFIX = ".stage-"  # tasks/.stage-ID-TOKEN: a task being staged
TRASH_PREFIX = ".trash-"  # tasks/.trash-ID-TOKEN: a failed run moved aside, being removed
STALE_TEMP = 15 * 60.0  # seconds: a staging directory or .part file idle this long is dead
SWEEP_SECONDS = 0.5  # the most an agent start spends looking for leftovers in task folders
GLOB_MAX_FILES = 10_000  # files one --collect brings back, at most
SUPERVISOR_WAIT = 2.0  # seconds a new run waits for the last run's supervisor to exit
GLOB_SECONDS = 5.0  # the most one --collect search may take (the agent serves nothing else)
# Temporary files: ours (`part_tag`) anywhere, and in the task's own folder also those of
# older versions (`.NAME.part`, `.NAME.PID.part`, `.NAME.staging`); a name of the user's in
# `work/` would have to look like `.x.12345.0123abcd.part` to be taken for one.
_OURS = re.compile(r"\..+\.\d+\.[0-9a-f]{8}\.part")
_OLDER = re.compile(r"\..+\.((\d+\.)?part|staging)")
_STAGING = re.compile(r"\.stage-([0-9a-f]{8,64})-[0-9a-f]{8}")


class FileOps:
    """The agent's file operations, on its work directory. Those that move file contents get
    the request's `Exchange`; `workdir` anchors relative paths."""

    def __init__(self, workdir: Path, tasks_dir: Path, paths: Callable[[str], TaskPaths],
                 resident: bool) -> None:
        self.workdir, self.tasks_dir = workdir, tasks_dir
        self.paths = paths  # a task's files, once its directory is known to be ours alone
        self.resident = resident  # False for the one-request-per-process fallback
        self.staged: set[str] = set()  # tasks staged through this agent (see `claim`)
        # open uploads and uncommitted staging directories: removed when the agent exits
        self._open_uploads: dict[int, _Upload] = {}
        self._open_stagings: set[Path] = set()
        atexit.register(self._abandon_temporaries)

    # ------------------------------------------------------------ temporaries

    def _abandon_temporaries(self) -> None:
        """Delete what unfinished uploads and stagings wrote: the kernel never confirmed them."""
        for upload in self._open_uploads.values():
            upload.abandon()
        self._open_uploads.clear()
        if self.resident:  # a one-shot agent exits after each request; its stagings live on
            for staging in self._open_stagings:
                shutil.rmtree(staging, ignore_errors=True)
        self._open_stagings.clear()

    def sweep(self) -> None:
        """Remove what killed agents and kernels left: staging directories and `.part` files
        idle for STALE_TEMP, and runs moved aside. Bounded in time: a later start goes on."""
        now, deadline = time.time(), time.monotonic() + SWEEP_SECONDS
        for entry in _entries(self.tasks_dir):
            stale_stage = entry.name.startswith(STAGE_PREFIX) and \
                now - last_change(entry.path) > STALE_TEMP
            if entry.name.startswith(TRASH_PREFIX) or stale_stage:
                shutil.rmtree(entry.path, ignore_errors=True)
            elif time.monotonic() < deadline and entry.is_dir(follow_symlinks=False):
                _remove_leftovers(entry.path, now, _OLDER)
                _remove_leftovers(os.path.join(entry.path, "work"), now)
        _remove_leftovers(str(self.workdir / "runtime"), now, _OLDER)

    # ------------------------------------------------------------ staging

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One agent at a time decides which copy of a task is kept (short: stats and renames).

        The lock is the tasks directory itself; NFS cannot lock a directory, so there a lock
        file in it serves. Where nothing can be locked (Lustre mounted without `flock`), the
        renames alone decide: a rename onto a task directory that exists fails.
        """
        fd = os.open(self.tasks_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            fd = os.open(self.tasks_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                pass
        try:
            yield
        finally:
            os.close(fd)

    def op_stage(self, exchange: Exchange, task: str, files: list[dict[str, Any]],
                 size: int = 0, commit: bool = False) -> dict[str, Any]:
        """Begin staging a task: a private staging directory with the payload's small files.

        Returns {"root"} and either "staging" (where the kernel puts the rest, relative to the
        work directory, before `commit`) or "existing": the state of an identical task that is
        already there, which the kernel attaches to instead. `size` is every byte the task will
        put there, so that a disk without room refuses before anything is sent. With `commit`
        the payload is the whole task: it is put in place at once, as `op_commit` answers
        (one round trip fewer for a small task).
        """
        paths = self.paths(task)
        existing = kept_state(paths)
        if existing is not None:
            self.staged.add(task)
            return {"root": str(paths.root), "existing": existing}
        needed = max(size, sum(entry["size"] for entry in files))
        self._check_room(self.tasks_dir, needed, f"task {task}")
        staging = self.tasks_dir / f"{STAGE_PREFIX}{task}-{secrets.token_hex(4)}"
        self._open_stagings.add(staging)
        view = memoryview(exchange.payload)
        offset = 0
        try:
            make_task_dir(staging)
            for entry in files:
                data = view[offset:offset + entry["size"]]
                offset += entry["size"]
                if len(data) != entry["size"] or \
                        hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise ValueError(f"{entry['name']} arrived damaged (size or hash differs)")
                target = _inside(staging, entry["name"])
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                _write_new(target, data)
        except BaseException as exc:
            self._drop(staging)  # half a task must not look staged
            if isinstance(exc, OSError) and disk_full(exc):
                raise self._no_room(self.tasks_dir, needed, f"task {task}", exc) from None
            raise
        relative = staging.relative_to(self.workdir).as_posix()
        return self.op_commit(task, relative) if commit else \
            {"root": str(paths.root), "staging": relative}

    def op_commit(self, task: str, staging: str) -> dict[str, Any]:
        """Put a completely staged task in place; if an identical one got there first (another
        kernel), keep that one. A failed, cancelled or lost earlier run is replaced."""
        paths = self.paths(task)
        source = self._staging(task, staging)
        _let_supervisor_finish(paths)
        TaskPaths(source).staged.touch(mode=0o600)
        trash = None
        with self._lock():
            existing = kept_state(paths)
            if existing is None:
                if os.path.lexists(paths.root):
                    trash = self.tasks_dir / f"{TRASH_PREFIX}{task}-{secrets.token_hex(4)}"
                    os.rename(paths.root, trash)
                try:
                    os.rename(source, paths.root)
                except OSError as exc:  # another agent's copy got there first (no lock)
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    existing = kept_state(paths) or State.PREPARED
        self._drop(source if existing is not None else None)
        self._open_stagings.discard(source)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        self.staged.add(task)
        return {"root": str(paths.root), "existing": existing}

    def op_unstage(self, task: str, staging: str) -> None:
        """The kernel gave up staging (an upload failed): remove what it had sent."""
        self._drop(self._staging(task, staging))

    def _staging(self, task: str, staging: str) -> Path:
        """The staging directory a kernel names, only if it is one of ours for this task."""
        name = Path(staging).name
        match = _STAGING.fullmatch(name)
        path = self.tasks_dir / name
        if match is None or match.group(1) != valid_task_id(task) or \
                path_problem(str(path), "private") is not None or not path.is_dir():
            raise ValueError(f"{staging!r} is not a staging directory of task {task}")
        return path

    def _drop(self, staging: Path | None) -> None:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            self._open_stagings.discard(staging)

    def claim(self, paths: TaskPaths, task: str) -> str | None:
        """Become the one that starts the task: None if this agent is, else the state found.

        The claim is a file created exclusively, so of two kernels that staged the identical
        task only one starts it. The other one's agent staged it too, so it attaches: the
        task's state is its answer, not an error. A task this agent did not stage (a second
        start of the same task) is refused as before.
        """
        state = read_state(paths)["state"]
        if state == State.PREPARED:
            try:
                os.close(os.open(paths.claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
            else:
                self.staged.discard(task)
                return None
        if task in self.staged:
            self.staged.discard(task)
            return read_state(paths)["state"]
        raise RuntimeError(f"task {task} was already started")

    # ------------------------------------------------------------ uploads and downloads

    def resolve(self, path: str) -> Path:
        """Relative paths live under the work directory; `~` is this user's home."""
        full = Path(os.path.expanduser(path))
        return full if full.is_absolute() else self.workdir / full

    def op_put_open(self, path: str, size: int, verify: bool = False,
                    part: list[int] | None = None, temp: str | None = None) -> Any:
        """Open an upload of `size` bytes to `path`; the answer is its handle.

        An upload sent in parallel streams (one per agent) gives each stream its `part`,
        [offset, length] of the file: the first opens the file (and answers with its handle
        and temporary name as {"handle", "temp"}), the others join that file by its `temp`
        name, and each closes its part before the first closes the whole."""
        target = self.resolve(path)
        if temp is None:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._check_room(target.parent, size, target.name)
        upload = _Upload(target, size, verify, part, temp)
        handle = id(upload)
        self._open_uploads[handle] = upload
        return {"handle": handle, "temp": str(upload.tmp)} if part is not None and temp is None \
            else handle

    @property
    def uploading(self) -> bool:
        return bool(self._open_uploads)

    def receiving(self, message: dict[str, Any]) -> _Upload | None:
        """The upload that the rest of `message`'s payload may be spliced into, if it is a
        chunk of one that can take it."""
        if message.get("op") != "put_chunk" or "id" in message:
            return None
        handle = message.get("args", {}).get("handle")
        upload = self._open_uploads.get(handle) if isinstance(handle, int) else None
        return upload if upload is not None and upload.splices else None

    def op_put_chunk(self, exchange: Exchange, handle: int) -> None:
        upload = self._open_uploads.get(handle)
        if upload is not None:
            upload.write(exchange.payload)

    def op_put_close(self, handle: int, sha256: str | None = None,
                     abandon: bool = False) -> int:
        """Finish an upload (or its part); with `abandon`, drop it (another part failed)."""
        upload = self._open_uploads.pop(handle, None)
        if upload is None:
            raise RuntimeError("upload was not opened (see the previous error)")
        if abandon:
            upload.abandon()
            return 0
        try:
            return upload.finish(sha256)
        except OSError as exc:
            if disk_full(exc):
                raise self._no_room(upload.target.parent, upload.size, upload.target.name,
                                    exc) from None
            raise

    def op_get(self, exchange: Exchange, path: str, offset: int = 0,
               length: int | None = None) -> dict[str, Any]:
        """Stream a file (or `length` bytes of it from `offset`: one of parallel streams)
        back in chunks; the reply, after the last chunk, gives the size sent."""
        with open(self.resolve(path), "rb") as f:
            end = os.fstat(f.fileno()).st_size
            if length is not None:
                end = min(end, offset + length)
            for start in range(offset, end, CHUNK):
                exchange.stream(FileRange(f.fileno(), start, min(CHUNK, end - start)))
        return {"size": max(end - offset, 0)}

    def op_read(self, exchange: Exchange, task: str, names: list[str],
                inline_max: int) -> list[dict[str, Any]]:
        """Small files of a task inline in the payload; for larger ones only their size."""
        paths = self.paths(task)
        listing, parts = [], []
        for name in names:
            try:
                size = _inside(paths.root, name).stat().st_size
            except FileNotFoundError:
                continue
            inline = size <= inline_max
            if inline:
                data = _inside(paths.root, name).read_bytes()
                size = len(data)
                parts.append(data)
            listing.append({"name": name, "size": size, "inline": inline})
        exchange.payload_out = b"".join(parts)
        return listing

    def op_glob(self, task: str, patterns: list[str]) -> dict[str, Any]:
        """Files of the task's working directory matching `patterns` (folders expanded), found
        without following links to folders, so that a link loop cannot pin the agent; at most
        GLOB_MAX_FILES of them, in at most GLOB_SECONDS. "stopped" says why the search ended
        early, if it did."""
        finder = _Finder(str(self.paths(task).work))
        for pattern in patterns:
            finder.search(pattern)
        return {"files": [{"name": n, "size": s} for n, s in finder.found.items()],
                "stopped": finder.stopped}

    # ------------------------------------------------------------ disk space

    def _check_room(self, where: Path, needed: int, what: str) -> None:
        """Refuse before writing what cannot fit (a quota is found out only when writing)."""
        free = _free_bytes(where)
        if free is not None and needed > free:
            raise self._no_room(where, needed, what, None)

    def _no_room(self, where: Path, needed: int, what: str, exc: OSError | None) -> Refusal:
        return Refusal(no_room(where, needed, what, exc, self.workdir))


def no_room(where: Path, needed: int, what: str, exc: OSError | None, workdir: Path) -> str:
    """The refusal for a full disk (or quota): which host, where, how much is needed and
    free, and what to do. `{host}` stands for the host's name (see `Refusal`)."""
    free = _free_bytes(where)
    has = f", which has {_size(free)} free" if free is not None else ""
    why = f" ({exc.strerror})" if exc is not None and exc.strerror else ""
    advice = "Free some space there (or ask for a larger quota)"
    if where == workdir or workdir in where.parents:
        advice += ", or set 'workdir:' of {host} to a file system with room"
    return (f"There is no room on {{host}} for {what}: it needs {_size(needed)} in {where}"
            f"{has}{why}. {advice}; nothing of it was left behind there.")


def disk_full(exc: BaseException) -> bool:
    """A write failed for want of space: a full disk, or the user's quota."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _let_supervisor_finish(paths: TaskPaths) -> None:
    """The kernel hears of a task's end from its runner, while the supervisor still writes the
    exit code and checks the state: a run of the same task that replaces the directory at once
    must wait for it (a moment), or it would write into the new run's files."""
    record = read_state(paths)
    pids = read_json(paths.pids)
    if not pids or record.get("launcher") != "process" or \
            record.get("host") != socket.gethostname():
        return
    deadline = time.monotonic() + SUPERVISOR_WAIT
    # a keeper supervises many tasks and stays: it is done with this one once the exit code
    # is written (its last write), a task's own supervisor once it has exited
    while pid_alive(pids["supervisor"]) and time.monotonic() < deadline and not (
            pids.get("keeper") and paths.exitcode.exists()):
        time.sleep(0.005)


def kept_state(paths: TaskPaths) -> str | None:
    """The state of a task directory that a new staging of the same task must not replace
    (it is whole, and started or about to be, or completed with its results), else None."""
    if not paths.root.is_dir():
        return None
    state = read_state(paths)["state"]
    if state == State.COMPLETED:
        return state if paths.result.exists() else None
    if state in FINAL_STATES:
        return None
    if state == State.PREPARED and not (paths.claim.exists() or paths.staged.exists()):
        return None  # made some other way (an older version, a crash): staged again
    return state


class _Upload:
    """One streamed file: written to a temporary name (unique: the same file may be sent by
    two tasks at once), renamed when whole. A write that fails deletes it at once, so a full
    disk is freed for the next task, and the error is given at `finish`.

    In parallel streams, each stream's upload is one `part` of the file ([offset, length]):
    the first creates the temporary file, the others (`joined`, given its name) write their
    part into it, and only the first renames it, once every part is closed."""

    def __init__(self, target: Path, size: int, verify: bool, part: list[int] | None = None,
                 joined: str | None = None) -> None:
        self.target = target
        self.size = size
        offset, self.expected = part if part is not None else (0, size)
        if not (0 <= offset and 0 <= self.expected and offset + self.expected <= size):
            raise ValueError(f"{target}: part {part} is not within its {size} bytes")
        self.digest = hashlib.sha256() if verify else None  # of its part, if one
        self.joined = joined is not None
        if joined is not None:
            self.tmp = Path(joined)
            if self.tmp.parent != target.parent or not self.tmp.name.endswith(".part") or \
                    not self.tmp.name.startswith(temp_prefix(target)):
                raise ValueError(f"{joined} is not an upload's temporary file for {target}")
            self.fd: int | None = os.open(self.tmp, os.O_WRONLY | os.O_NOFOLLOW)
        else:
            self.tmp = temp_beside(target, part_tag())
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        if offset:
            os.lseek(self.fd, offset, os.SEEK_SET)
        self.written = 0
        self.error: OSError | None = None
        self.can_splice = True

    def write(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            write_all(self.fd, data)  # type: ignore[arg-type]
        except OSError as exc:
            self.error = exc
            self.abandon()
            return
        if self.digest is not None:
            self.digest.update(data)
        self.written += len(data)

    @property
    def splices(self) -> bool:
        """Whether the rest of a chunk may go from the pipe into the file unseen (nothing to
        hash, no failed write to drop it for)."""
        return self.digest is None and self.error is None and self.can_splice

    def receive(self, pipe_fd: int, count: int) -> int:
        """Move up to `count` bytes of a chunk from `pipe_fd` into the file: spliced, or
        read and written where splice cannot serve; after a failed write, read and dropped,
        so that the frames after them are still found. 0 once the pipe has ended;
        BlockingIOError when nothing has come yet."""
        if self.splices:
            try:
                moved = splice_into(pipe_fd, self.fd, count)  # type: ignore[arg-type]
            except io.UnsupportedOperation:
                self.can_splice = False
            except BlockingIOError:
                raise
            except OSError as exc:  # a write that failed: a full disk
                self.error = exc
                self.abandon()
            else:
                self.written += moved
                return moved
        data = os.read(pipe_fd, min(count, 1 << 20))
        self.write(data)
        return len(data)

    def finish(self, sha256: str | None) -> int:
        try:
            if self.error is not None:
                raise self.error
            os.close(self.fd)  # type: ignore[arg-type]
            self.fd = None
            if self.written != self.expected:
                raise ValueError(f"{self.target}: received {self.written} of "
                                 f"{self.expected} bytes")
            if self.digest is not None and self.digest.hexdigest() != sha256:
                raise ValueError(f"{self.target}: content hash differs from the sender's")
            if not self.joined:
                if os.stat(self.tmp).st_size != self.size:  # a part was never sent
                    raise ValueError(f"{self.target}: {os.stat(self.tmp).st_size} bytes in "
                                     f"all, not {self.size}")
                os.replace(self.tmp, self.target)
        except BaseException:
            self.abandon()
            raise
        return self.written

    def abandon(self) -> None:
        """Let the file go; the first part's upload also removes it (a joined one leaves it
        to the first, whose close is told to abandon it too)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if not self.joined:
            self.tmp.unlink(missing_ok=True)


class _Finder:
    """A glob over one folder that never follows a link to a folder where it recurses (`**`,
    a matched folder's contents), skips hidden names unless the pattern spells the dot, and
    stops at GLOB_MAX_FILES files or after GLOB_SECONDS."""

    def __init__(self, root: str, limit: int = GLOB_MAX_FILES,
                 seconds: float = GLOB_SECONDS) -> None:
        self.root = root
        self.limit = limit
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.found: dict[str, int] = {}
        self.stopped: str | None = None

    def search(self, pattern: str) -> None:
        parts: list[str] = []
        for part in pattern.split("/"):
            if part in ("", "."):
                continue
            if part == "..":  # the kernel refuses these; a stray one finds nothing
                return
            if not (part == "**" and parts and parts[-1] == "**"):
                parts.append(part)
        self._walk(self.root, "", parts)

    def _over(self) -> bool:
        if self.stopped is None and len(self.found) >= self.limit:
            self.stopped = f"it matched more than {self.limit} files"
        elif self.stopped is None and time.monotonic() > self.deadline:
            self.stopped = f"searching took longer than {self.seconds:.0f} s"
        return self.stopped is not None

    def _walk(self, directory: str, relative: str, parts: list[str]) -> None:
        if self._over():
            return
        if not parts:
            self._take(directory, relative)
            return
        head, rest = parts[0], parts[1:]
        if head == "**":
            if not rest:  # everything below: the folder's files
                self._take(directory, relative)
                return
            for folder, below in self._folders(directory, relative):
                self._walk(folder, below, rest)
        elif not glob.has_magic(head):
            path = os.path.join(directory, head)
            if rest and os.path.isdir(path):  # named in the pattern: its depth bounds links
                self._walk(path, _join(relative, head), rest)
            elif not rest and os.path.lexists(path):
                self._take(path, _join(relative, head))
        else:
            for entry in _entries(directory):
                if self._over():
                    return
                if (entry.name.startswith(".") and not head.startswith(".")) or \
                        not fnmatch.fnmatchcase(entry.name, head):
                    continue
                if rest:
                    if _is_dir(entry, follow=True):
                        self._walk(entry.path, _join(relative, entry.name), rest)
                else:
                    self._take(entry.path, _join(relative, entry.name))

    def _folders(self, directory: str, relative: str) -> Iterator[tuple[str, str]]:
        """`directory` and every folder below it, not through links, not hidden ones."""
        stack = [(directory, relative)]
        while stack and not self._over():
            folder, below = stack.pop()
            yield folder, below
            for entry in _entries(folder):
                if not entry.name.startswith(".") and _is_dir(entry, follow=False):
                    stack.append((entry.path, _join(below, entry.name)))

    def _take(self, path: str, relative: str) -> None:
        """A matched file, or every file below a matched folder (hidden ones too, as a copy of
        the folder would have them)."""
        if os.path.isfile(path):
            self._add(relative, path)
            return
        if not os.path.isdir(path):
            return
        stack = [(path, relative)]
        while stack and not self._over():
            folder, below = stack.pop()
            for entry in _entries(folder):
                if self._over():
                    return
                if _is_dir(entry, follow=False):
                    stack.append((entry.path, _join(below, entry.name)))
                elif os.path.isfile(entry.path):
                    self._add(_join(below, entry.name), entry.path)

    def _add(self, relative: str, path: str) -> None:
        if relative and relative not in self.found:
            try:
                self.found[relative] = os.stat(path).st_size
            except OSError:
                pass


def _join(relative: str, name: str) -> str:
    return f"{relative}/{name}" if relative else name


def _entries(directory: str | Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda entry: entry.name)
    except OSError:
        return []


def _is_dir(entry: os.DirEntry[str], follow: bool) -> bool:
    try:
        return entry.is_dir(follow_symlinks=follow)
    except OSError:
        return False


def last_change(path: str) -> float:
    """When a folder or anything in it last changed (a file written in a subfolder does not
    touch the folder's own time): how long a leftover has been idle."""
    newest = 0.0
    for folder, dirs, files in os.walk(path):
        for name in [".", *dirs, *files]:
            try:
                newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
            except OSError:
                pass
    return newest


def _remove_leftovers(directory: str, now: float, older: re.Pattern[str] | None = None) -> None:
    """Temporary files idle for STALE_TEMP in `directory`: ours, and with `older` those
    of earlier versions too."""
    for entry in _entries(directory):
        if _OURS.fullmatch(entry.name) or (older is not None and older.fullmatch(entry.name)):
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP:
                    os.unlink(entry.path)
            except OSError:
                pass


def _free_bytes(where: Path) -> int | None:
    try:
        info = os.statvfs(where)
    except OSError:
        return None
    blocks = info.f_bfree if os.geteuid() == 0 else info.f_bavail  # root may use the reserve
    return blocks * info.f_frsize


def _size(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _inside(root: Path, name: str) -> Path:
    """`root/name`, refusing names that would leave `root`."""
    target = (root / name).resolve()
    if target != root.resolve() and root.resolve() not in target.parents:
        raise ValueError(f"{name!r} is outside the task directory")
    return root / name


def _write_new(target: Path, data: memoryview) -> None:
    tmp = temp_beside(target, part_tag())
    try:
        with open(tmp, "wb", buffering=0) as f:
            write_all(f.fileno(), data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
