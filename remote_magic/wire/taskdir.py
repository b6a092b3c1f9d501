"""The files of one task directory, and how they are written.

This module is shared by the kernel side, the resident agent and the runner, so it imports
only the standard library. Every file that another process may read while it changes is
written atomically (temp file + rename): a reader sees the old version or the new one, never
half of one. Status comes from these files alone; a scheduler is asked only for queue state.

The state file is the exception: it changes several times in a task's life, and replacing a
file frees its old inode. On ext4 without a journal (this project's CI machine, and many VMs)
every later file creation in that block group scans past each inode freed in the last minutes
(ext4's recently_deleted check): measured here, a file creation cost 25 us with no frees
around and 200 us with one free per creation, and a task creates about 18 files. So the state
file is a log: each change appends one whole record as a JSON line (one write, O_APPEND), and
the record is the last line that parses; a line cut short by a crash, or still being written
as it is read, is passed over. A file holding one JSON object (an earlier writer) reads the same.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .diskwrite import write_all
from .states import FINAL_STATES, STATES, State
from .tempnames import temp_prefix

# How often a running task's supervisor touches its heartbeat file, in seconds.
HEARTBEAT_INTERVAL = 2.0

_TASK_ID = re.compile(r"[0-9a-f]{8,64}")


def valid_task_id(task_id: str) -> str:
    """Task ids end up in paths and remote command lines: accept only lowercase hex."""
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        raise ValueError(f"not a valid task id: {task_id!r}")
    return task_id


TASKS = "tasks"  # a work directory's folder of task directories


def task_path(task_id: str) -> str:
    """A task's directory relative to the work directory, with forward slashes: the same
    on this machine and in a request to a host."""
    return f"{TASKS}/{valid_task_id(task_id)}"


class TaskPaths:
    """Names every file of one task, so no other module spells a file name."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    spec = property(lambda self: self.root / "spec.json")
    inputs = property(lambda self: self.root / "inputs.rmns")
    # a sweep's element: the inputs all its elements share (a link to one copy on the host)
    shared = property(lambda self: self.root / "shared.rmns")
    state = property(lambda self: self.root / "state.json")
    pids = property(lambda self: self.root / "pids.json")
    heartbeat = property(lambda self: self.root / "heartbeat")
    stdout = property(lambda self: self.root / "stdout")
    stderr = property(lambda self: self.root / "stderr")
    progress = property(lambda self: self.root / "progress.json")
    outputs = property(lambda self: self.root / "outputs.rmns")
    displays = property(lambda self: self.root / "displays.rmns")
    events = property(lambda self: self.root / "events")  # displays as they happen (JSON lines)
    result = property(lambda self: self.root / "result.json")
    error = property(lambda self: self.root / "error.json")
    exitcode = property(lambda self: self.root / "exitcode")
    cancel = property(lambda self: self.root / "cancel")
    work = property(lambda self: self.root / "work")
    # batch hosts only: the job script, and the scheduler's own output files
    job_script = property(lambda self: self.root / "job.sh")
    job_out = property(lambda self: self.root / "job.out")
    job_err = property(lambda self: self.root / "job.err")
    # written just before a staged directory is renamed into place: the task is whole
    staged = property(lambda self: self.root / ".staged")
    # created (O_EXCL) by whoever starts the task: two kernels never both start it
    claim = property(lambda self: self.root / ".started")
    # created (O_EXCL) by the first start of a batch job: a restarted job runs nothing
    job_claim = property(lambda self: self.root / "job.started")
    # the kernel's copy only: written once every result file has been fetched
    fetched = property(lambda self: self.root / ".fetched")


# the files of a task directory the kernel reads a finished task's results from
RESULT_FILES = tuple(getattr(TaskPaths("."), part).name for part in (
    "state", "error", "exitcode", "progress", "displays", "outputs", "result"))
# the files a prepared task is staged with
PREPARED_FILES = tuple(getattr(TaskPaths("."), part).name for part in ("spec", "inputs"))


def write_atomic(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write a whole file so that readers never see it half-written."""
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path))
    try:
        with os.fdopen(fd, "wb", buffering=0):
            write_all(fd, data)
        if mode != 0o600:  # mkstemp's own mode
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, sort_keys=True))


def read_json(path: Path, default: Any = None) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return default
    except ValueError:  # an old-style writer or a truncated copy: treat as absent
        return default


def parse_state(data: bytes) -> dict[str, Any] | None:
    """The current record of a state file's bytes (see the module's docstring); None when no
    line holds one."""
    for line in reversed(data.split(b"\n")):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _state_bytes(paths: TaskPaths) -> bytes:
    try:
        with open(paths.state, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def read_state(paths: TaskPaths) -> dict[str, Any]:
    """The task's state record: {"state", "history": {state: time}, "reason"}."""
    return _record(_state_bytes(paths))


def _record(data: bytes) -> dict[str, Any]:
    """The record in a state file's bytes; a prepared task's when there is none."""
    return parse_state(data) or {"state": State.PREPARED, "history": {}, "reason": None}


def set_state(paths: TaskPaths, state: str, reason: str | None = None,
              when: float | None = None, **extra: Any) -> dict[str, Any]:
    """Move the task to `state`, keeping when each state was entered."""
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    with _locked(paths):
        data = _state_bytes(paths)
        record = _record(data)
        record["state"] = state
        record.setdefault("history", {})[state] = when if when is not None else time.time()
        if reason is not None or state in FINAL_STATES:
            record["reason"] = reason
        record.update(extra)
        _append_record(paths, data, record)
    return record


def amend_state(paths: TaskPaths, missing: str, **extra: Any) -> dict[str, Any]:
    """Add `extra` to the task's record as it is now (its state unchanged), unless the record
    has `missing` already: what another writer recorded meanwhile (a job that started the
    task, say) is never written over."""
    with _locked(paths):
        data = _state_bytes(paths)
        record = _record(data)
        if record.get(missing) is None:
            record.update(extra)
            _append_record(paths, data, record)
    return record


def _append_record(paths: TaskPaths, data: bytes, record: dict[str, Any]) -> None:
    line = json.dumps(record, sort_keys=True).encode() + b"\n"
    if data and not data.endswith(b"\n"):  # a line cut short, or one object: start afresh
        line = b"\n" + line
    append_line(paths.state, line)


@contextmanager
def _locked(paths: TaskPaths) -> Iterator[None]:
    """Hold the state file's lock while its record is read and the next one appended: the
    agent, a runner and a batch job may each change the record, and one that read it before
    another's change must not append a record that undoes it. Where the file system cannot
    lock, the appends still never interleave; only that narrow window stays open."""
    try:
        fd = os.open(paths.state, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError:
        yield  # cannot even open it: the append will say why
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def append_line(path: Path, line: bytes) -> None:
    """Append `line` in one write: appends of whole lines never interleave on a local disk."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(line)
        while view:  # one write for a regular file; a short one only on a full disk
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def read_exitcode(paths: TaskPaths) -> int | None:
    try:
        text = paths.exitcode.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def make_task_dir(root: Path) -> TaskPaths:
    """Create a task directory private to the user (0700), with its working directory."""
    root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    root.mkdir(mode=0o700, exist_ok=True)
    os.chmod(root, 0o700)
    paths = TaskPaths(root)
    paths.work.mkdir(mode=0o700, exist_ok=True)
    return paths


# -- trust: nothing another user could have written is loaded ---------------------------------


class Refusal(Exception):
    """A request turned down for a reason the user has to act on; the message says how.

    `{host}` in the message stands for the host's name in the hosts file: the agent knows its
    machine only by its hostname, so the kernel puts the name in (`for_host`).
    """

    def for_host(self, name: str) -> str:
        return str(self).replace("{host}", name)


def path_problem(path: str, kind: str) -> dict[str, Any] | None:
    """Why another user could have written `path`, or None (also when it does not exist).

    `kind`: "dir" (a directory nobody else can write), "private" (a directory nobody else can
    even enter, 0700), "file" (a regular file nobody else can write) or "owned" (a regular
    file of ours, whatever its mode: it lies in a directory nobody else can enter).
    Self-contained, as `trust_problem`, whose source travels to hosts (transport/runtime.py).
    """
    import os
    import stat

    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    found = {"path": path, "uid": info.st_uid, "mode": stat.S_IMODE(info.st_mode)}
    wants_dir = kind in ("dir", "private")
    if stat.S_ISLNK(info.st_mode):
        return {**found, "issue": "symlink"}
    if not (stat.S_ISDIR if wants_dir else stat.S_ISREG)(info.st_mode):
        return {**found, "issue": "type", "wanted": "a directory" if wants_dir else "a file"}
    if info.st_uid != os.geteuid():
        return {**found, "issue": "owner"}
    if info.st_mode & (0o077 if kind == "private" else 0 if kind == "owned" else 0o022):
        return {**found, "issue": "writable"}
    return None


def trust_problem(workdir: str, inside: Sequence[tuple[str, str]] = (),
                  create: bool = False) -> dict[str, Any] | None:
    """The first reason another user could have put files into `workdir`, or None.

    A work directory is trusted when it is ours and nobody else can write it, and no other
    user controls a directory above it (owns it, or may write it without the sticky bit that
    /tmp has), since they could swap it for their own. `inside` lists paths relative to it,
    with the kind `path_problem` checks them as. With `create`, a missing work directory (and
    each missing directory above it) and the missing "dir"/"private" entries of `inside`
    are made 0700. A group-writable directory above is accepted: HPC project spaces are so,
    and a swap is still caught here, since the swapped-in directory is not ours.

    Self-contained (imports inside, no other function of ours), since its source is shipped
    to check a host's runtime before any of our code runs there (transport/runtime.py).
    """
    import os
    import stat

    uid = os.geteuid()
    real = os.path.realpath(os.path.expanduser(workdir))
    above, missing = os.path.dirname(real), []
    while not os.path.lexists(above):
        missing.append(above)
        above = os.path.dirname(above)
    parts = [above]
    while os.path.dirname(parts[-1]) != parts[-1]:
        parts.append(os.path.dirname(parts[-1]))
    for ancestor in parts:
        info = os.stat(ancestor)
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid not in (0, uid):
            return {"path": ancestor, "issue": "ancestor_owner", "uid": info.st_uid,
                    "mode": mode, "workdir": real}
        if mode & 0o002 and not mode & stat.S_ISVTX:
            return {"path": ancestor, "issue": "ancestor_writable", "uid": info.st_uid,
                    "mode": mode, "workdir": real}
    if create:
        for directory in [*reversed(missing), real]:
            try:
                os.mkdir(directory, 0o700)
            except FileExistsError:  # another agent made it meanwhile: checked below
                pass
            except OSError:  # not allowed here: whoever writes there next says so
                break
    if not os.path.lexists(real):
        return None
    problem = path_problem(real, "dir")
    if problem is not None:
        return {**problem, "workdir": real}
    for name, kind in inside:
        path = os.path.join(real, name)
        if create and kind in ("dir", "private") and not os.path.lexists(path):
            try:
                os.mkdir(path, 0o700)
            except OSError:  # made meanwhile (checked next), or not allowed (said later)
                pass
        problem = path_problem(path, kind)
        if problem is not None:
            return {**problem, "workdir": real}
    return None


def describe_problem(problem: dict[str, Any], where: str, remedy: str) -> str:
    """The refusal for a `trust_problem`: what is wrong, why it matters, what to do.

    `where` names the directory for the user ("the work directory of {host}"); `remedy`
    says how to choose another one ("set 'workdir:' of {host} ...").
    """
    path, workdir = problem["path"], problem.get("workdir", problem["path"])
    where = where[:1].upper() + where[1:]
    mode = f"{problem['mode']:04o}"
    owner = _user(problem["uid"])
    risk = ("another user could put files there that your tasks would load and run as you, "
            "so remote_magic does not use it")
    issue = problem["issue"]
    if issue == "ancestor_owner":
        return (f"{where}, {workdir}, lies inside {path}, which belongs to user "
                f"'{owner}': they could swap the work directory for one of their own, and "
                f"{risk}. {remedy}, in a place only you (and root) control, such as your home.")
    if issue == "ancestor_writable":
        return (f"{where}, {workdir}, lies inside {path}, which every user may "
                f"change (mode {mode}, without the sticky bit that /tmp has): they could swap "
                f"the work directory for one of their own, and {risk}. {remedy}, in a place "
                "only you (and root) control, such as your home.")
    subject = (f"{where}, {path}," if path == workdir
               else f"{path}, in {where[:1].lower() + where[1:]} ({workdir}),")
    if issue == "symlink":
        state = "is a symbolic link"
    elif issue == "type":
        state = f"is not {problem.get('wanted', 'what it should be')}"
    elif issue == "owner":
        state = f"belongs to user '{owner}', not to you ('{_user(os.geteuid())}')"
    elif problem["mode"] & 0o022:
        state = f"can be changed by other users (mode {mode})"
    else:
        state = f"is open to other users (mode {mode}, where a task's directory is 0700)"
    if path == workdir and issue == "owner":
        fix = f"{remedy} (remote_magic creates a missing one private, mode 0700)."
    elif path == workdir and issue == "writable":
        fix = (f"If nobody else has used it, make it private with `chmod 700 {path}`; "
               f"otherwise move it aside (`mv {path} {path}.suspect`), and remote_magic "
               "creates a fresh private one.")
    else:
        fix = (f"Move it aside (`mv {path} {path}.suspect`) and have it checked or removed; "
               "remote_magic creates a fresh private one in its place.")
    return f"{subject} {state}: {risk}. {fix}"


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def workdir_message(problem: dict[str, Any], host: str = "{host}") -> str:
    """`describe_problem` for a host's work directory (`{host}`: filled in by the kernel)."""
    return describe_problem(problem, f"the work directory of {host}",
                            f"Set 'workdir:' of {host} in the hosts file to a directory of "
                            "your own")


def workdir_refusal(workdir: str | os.PathLike, inside: Sequence[tuple[str, str]] = (),
                    create: bool = False) -> Refusal | None:
    """`trust_problem` as the refusal a host's agent (or a local kernel) gives."""
    problem = trust_problem(str(workdir), inside, create)
    return None if problem is None else Refusal(workdir_message(problem))
