"""An allocation's folder on the host, and the handshake that proves who is on a worker link.

An allocation is one batch job running a *worker* (worker.py) on the node the scheduler gave
it; tasks sent to the allocation run there, in the worker's warm runners. Everything the
login node and the node share goes through the work directory, which both see (a cluster's
shared filesystem), in `allocs/NAME/`:

- `alloc.json`: what was asked (scheduler, resources, slots) and the job id, written by the
  agent that submitted the job;
- `secret`: 32 random bytes (hex), mode 0600, made before the job is submitted: the worker
  and the agents prove to each other that they know it, so the worker's port is never open
  to anyone else;
- `worker.json`: where the worker listens (host, address, port, pid), written once it does;
- `queue/`: one empty file per task waiting to start (`<nanoseconds>-<task id>`): the worker
  starts them in that order, up to its slots. The queue works with no network at all (the
  worker looks at it every QUEUE_SCAN seconds); a message on the link only says "look now";
- `heartbeat`: touched by the worker every HEARTBEAT_INTERVAL;
- `ended.json`: how the allocation ended (written once, by whoever learns it first);
- `job.sh`, `job.out`, `job.err`, `exitcode`: the job script and the scheduler's files.

Standard library only: the worker imports this on the node.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from ..wire.taskdir import read_json, valid_task_id, write_json

ALLOCS = "allocs"  # a work directory's folder of allocations
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
GREETING = b"remote_magic worker 1"
LINE_MAX = 256  # bytes of a handshake line: nothing longer is read from an unproven peer
HANDSHAKE_TIMEOUT = 10.0  # seconds a peer may take to prove itself


def valid_name(name: str) -> str:
    """An allocation's name becomes a folder and a host name: letters, digits, . _ -."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"{name!r} cannot name an allocation: use letters, digits, '.', '_' "
                         "and '-' (at most 63), starting with a letter or digit")
    return name


class AllocPaths:
    """Names every file of one allocation, so no other module spells a file name."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    spec = property(lambda self: self.root / "alloc.json")
    secret = property(lambda self: self.root / "secret")
    worker = property(lambda self: self.root / "worker.json")
    queue = property(lambda self: self.root / "queue")
    heartbeat = property(lambda self: self.root / "heartbeat")
    ended = property(lambda self: self.root / "ended.json")
    work = property(lambda self: self.root / "work")  # the job's working directory
    job_script = property(lambda self: self.root / "job.sh")
    job_out = property(lambda self: self.root / "job.out")
    job_err = property(lambda self: self.root / "job.err")
    exitcode = property(lambda self: self.root / "exitcode")

    @property
    def name(self) -> str:
        return self.root.name

    def make(self) -> None:
        """A new allocation's folder, private (0700), with its queue and a fresh secret."""
        self.root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.mkdir(mode=0o700)
        for folder in (self.queue, self.work):
            folder.mkdir(mode=0o700)
        fd = os.open(self.secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))

    def key(self) -> bytes:
        """The shared secret; refused unless it is a file of ours that only we can read."""
        info = os.lstat(self.secret)
        if not os.path.isfile(self.secret) or os.path.islink(self.secret) or \
                info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise PermissionError(f"{self.secret} must be a file of yours with mode 0600 "
                                  f"(it is {info.st_mode & 0o777:04o}): an allocation whose "
                                  "secret others can read is not used")
        return self.secret.read_text().strip().encode()

    # ------------------------------------------------------------ the queue

    def enqueue(self, task_id: str) -> None:
        (self.queue / f"{time.time_ns():020d}-{valid_task_id(task_id)}").touch(mode=0o600)

    def waiting(self) -> list[tuple[Path, str]]:
        """The queued tasks, oldest first: (queue entry, task id)."""
        found = []
        try:
            names = sorted(os.listdir(self.queue))
        except FileNotFoundError:
            return []
        for name in names:
            _, _, task_id = name.partition("-")
            try:
                found.append((self.queue / name, valid_task_id(task_id)))
            except ValueError:
                continue  # a temp file, or not ours
        return found

    def dequeue(self, task_id: str) -> bool:
        """Take a task off the queue; False when it was not there (started, or never)."""
        removed = False
        for entry, queued in self.waiting():
            if queued == task_id:
                try:
                    entry.unlink()
                    removed = True
                except FileNotFoundError:
                    pass
        return removed

    # ------------------------------------------------------------ records

    def read_spec(self) -> dict[str, Any]:
        return read_json(self.spec, {})

    def end(self, state: str, reason: str) -> dict[str, Any]:
        """Record how the allocation ended, unless that is already known (the first word
        stands: the worker's own, or the first agent's that learned it)."""
        ended = read_json(self.ended)
        if ended is None:
            ended = {"state": state, "reason": reason, "at": time.time()}
            try:
                write_json(self.ended, ended)
            except FileNotFoundError:  # purged meanwhile
                pass
        return ended


def allocation_paths(workdir: Path, name: str) -> AllocPaths:
    return AllocPaths(workdir / ALLOCS / valid_name(name))


def proof(key: bytes, nonce: str, side: str) -> str:
    """What a peer sends to show that it knows the secret: a keyed hash of the other side's
    random nonce (and which side it speaks for, so an answer cannot be sent back as is)."""
    return hmac.new(key, f"{side}:{nonce}".encode(), hashlib.sha256).hexdigest()


def check_proof(key: bytes, nonce: str, side: str, given: str) -> bool:
    return hmac.compare_digest(proof(key, nonce, side), given)


def new_nonce() -> str:
    return secrets.token_hex(16)
