"""The agent's side of allocations: start, list and stop them, and serve the tasks of one.

`AllocOps` holds the operations a kernel asks a host's agent for (`alloc_start`,
`alloc_list`, `alloc_stop`): the allocation's folder and secret, its worker job, and what
the scheduler says about it. `Served` is what an agent started for one allocation
(`--allocation NAME`) does instead of forking: it puts tasks on the allocation's queue, says
"look now" to the worker over its link, hears of starts and ends there, and gives its
tasks' states what only the allocation can say (waiting for it, or that it ended).

An allocation's state is the worker's heartbeat while that beats; only when it does not is
the scheduler asked (through BatchOps: one command for all jobs, at most once a second).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from ..wire.protocol import FrameReader, encode
from ..wire.states import FINAL_STATES, State
from ..wire.taskdir import (
    HEARTBEAT_INTERVAL,
    Refusal,
    TaskPaths,
    path_problem,
    read_json,
    set_state,
    workdir_message,
    write_json,
)
from . import runner
from .allocation import (
    ALLOCS,
    GREETING,
    LINE_MAX,
    AllocPaths,
    allocation_paths,
    check_proof,
    new_nonce,
    proof,
)
from .batchops import (
    LOST_GRACE,
    SCHEDULER_SILENCE,
    STALE_HEARTBEAT,
    VERDICT_WAIT,
    BatchOps,
    run_command,
    runtime_command,
    submit_job,
)
from .schedulers import scheduler_for
from .schedulers.units import walltime_seconds

BEATING = 3 * HEARTBEAT_INTERVAL  # a worker heard from this recently is running
RECONNECT = 2.0  # seconds before trying again to reach a worker that could not be reached
MAX_BACKOFF = 60.0  # ... doubled after each failure, up to this
CONNECT_TIMEOUT = 2.0  # a worker's port that drops packets (a firewall) delays an agent this long


class AllocOps:
    """Allocations on this host: their folders, worker jobs and states."""

    def __init__(self, workdir: Path, batch: BatchOps) -> None:
        self.workdir, self.batch = workdir, batch

    def paths(self, name: str) -> AllocPaths:
        """An allocation's files, once nobody else can have written its folder: its worker's
        address and secret are read from there."""
        paths = allocation_paths(self.workdir, name)
        for path, kind in ((paths.root.parent, "dir"), (paths.root, "private")):
            problem = path_problem(str(path), kind)
            if problem is not None:
                raise Refusal(workdir_message({**problem, "workdir": str(self.workdir)}))
        return paths

    def op_alloc_start(self, name: str, scheduler: str, resources: dict[str, Any],
                       slots: int | None = None, setup: str = "", python: str | None = None,
                       template: str | None = None) -> dict[str, Any]:
        """Submit the job that runs the allocation's worker; its folder and secret first."""
        paths = self.paths(name)
        if paths.root.exists():
            found = self.describe(paths)
            if found["state"] != "ended":
                raise Refusal(f"allocation {name} already exists (job {found['job_id']}, "
                              f"{found['state']}): use it as a host (-q {name}), or stop it "
                              f"first (%remote_alloc --stop {name})")
            shutil.rmtree(paths.root)  # an ended one: its tasks' folders keep their records
        batch = scheduler_for(scheduler)
        paths.make()
        try:
            command = runtime_command(python, "remote_magic.host.worker", str(paths.root),
                                      "--workdir", str(self.workdir))
            script = batch.render(template, resources, f"rm-alloc-{name}", str(paths.root),
                                  setup, command)
            spec = {"name": name, "scheduler": scheduler, "resources": resources,
                    "slots": slots or resources.get("cores") or 1, "submitted": time.time()}
            write_json(paths.spec, spec)
            spec["job_id"] = submit_job(batch, script, paths.job_script, paths.work,
                                        "the allocation's job")
            write_json(paths.spec, spec)
        except BaseException:
            shutil.rmtree(paths.root, ignore_errors=True)  # nothing half-made is left
            raise
        return self.describe(paths)

    def op_alloc_list(self) -> list[dict[str, Any]]:
        found = []
        try:
            names = sorted(os.listdir(self.workdir / ALLOCS))
        except FileNotFoundError:
            return []
        for name in names:
            try:
                found.append(self.describe(self.paths(name)))
            except ValueError:
                continue
        return found

    def op_alloc_stop(self, name: str) -> dict[str, Any]:
        """End an allocation: its worker kills the tasks running there, and the job is
        cancelled (also when it is still queued)."""
        paths = self.paths(name)
        spec = paths.read_spec()
        if not spec:
            raise Refusal(f"there is no allocation {name} on this host")
        found = self.describe(paths)
        if found["state"] == "ended":
            return found
        link = WorkerLink.reach(paths)
        if link is not None:
            link.send({"op": "stop"})
            link.wait_closed(runner.KILL_GRACE + 3.0)
            link.close()
        paths.end(State.CANCELLED, "stopped by the user")
        if spec.get("job_id"):
            batch = scheduler_for(spec["scheduler"])
            run_command(batch.cancel_command([spec["job_id"]]))
            self.batch.ask_again(batch.name)
        return self.describe(paths)

    # ------------------------------------------------------------ state

    def describe(self, paths: AllocPaths) -> dict[str, Any]:
        """The allocation as a list shows it: state (queued, starting, running, ended),
        job id, node, and the seconds left of its walltime."""
        spec = paths.read_spec()
        state, reason = self.state(paths, spec)
        worker = read_json(paths.worker) or {}
        ended = read_json(paths.ended) or {}
        left = None
        walltime = (spec.get("resources") or {}).get("walltime")
        if worker.get("started") and walltime and state == "running":
            left = max(0.0, worker["started"] + walltime_seconds(walltime) - time.time())
        return {"name": paths.name, "job_id": spec.get("job_id"), "state": state,
                "reason": reason, "node": worker.get("host"), "slots": spec.get("slots"),
                "submitted": spec.get("submitted"), "started": worker.get("started"),
                "time_left": left, "scheduler": spec.get("scheduler"),
                "outcome": ended.get("state")}  # how it ended: timed_out, cancelled, ...

    def state(self, paths: AllocPaths, spec: dict[str, Any]) -> tuple[str, str | None]:
        """(queued | starting | running | ended, why): the worker's heartbeat while it
        beats; the scheduler when it does not (and then its word on an end is recorded)."""
        ended = read_json(paths.ended)
        if ended is not None:
            return _said(ended)
        if not spec.get("job_id"):
            return "ended", "never submitted"
        worker = read_json(paths.worker)
        silent = _age(paths.heartbeat)
        if worker is not None:  # its start counts as its first beat
            silent = min(silent, time.time() - float(worker.get("started") or 0))
        if worker is not None and silent < BEATING:
            return "running", None
        batch = scheduler_for(spec["scheduler"])
        job = self.batch.ask(batch, [spec["job_id"]]).get(spec["job_id"])
        if job is None:  # gone from the queue, and accounting (if any) does not know it
            if time.time() - spec.get("submitted", 0) < LOST_GRACE:
                return "queued", None
            return self._ended(paths, State.LOST, "its job left the queue")
        if job.state in FINAL_STATES:
            words = {State.TIMED_OUT: "its walltime ended", State.CANCELLED: "its job was "
                     "cancelled", State.COMPLETED: "its worker ended"}.get(job.state, job.state)
            return self._ended(paths, job.state, f"{words} ({batch.title} job "
                                                  f"{spec['job_id']}: {job.reason or job.state})")
        if job.state == State.QUEUED or (job.state == "" and worker is None):
            return "queued", job.reason  # (or the scheduler could not say: as before)
        if worker is None:
            return "starting", job.reason
        limit = STALE_HEARTBEAT + (SCHEDULER_SILENCE if job.state == "" else 0.0)
        if silent > limit:
            run_command(batch.cancel_command([spec["job_id"]]))
            return self._ended(paths, State.LOST, f"its worker on {worker.get('host')} has not "
                                                  f"been heard from for {silent:.0f} s; job "
                                                  f"{spec['job_id']} was cancelled")
        return "running", None

    def _ended(self, paths: AllocPaths, state: str, reason: str) -> tuple[str, str]:
        return _said(paths.end(state, reason))


class Served:
    """An agent serving one allocation: its tasks start on the allocation's node."""

    def __init__(self, ops: AllocOps, name: str) -> None:
        self.ops, self.name = ops, name
        self.paths = ops.paths(name)
        self.link: WorkerLink | None = None
        # links that broke, closed once the agent's selector has let go of them (a closed
        # socket's number may be taken by the next one at once)
        self.broken: list[WorkerLink] = []
        self.tried, self.backoff = 0.0, 0.0  # the first try as soon as the worker listens
        self.mine: set[str] = set()  # tasks this agent put on the queue, until they end
        self._now: tuple[float, dict[str, Any]] | None = None

    def describe(self) -> dict[str, Any]:
        """The allocation's state, worked out at most once per poll (a tenth of a second)."""
        now = time.monotonic()
        if self._now is None or now - self._now[0] > 0.1:
            if not self.paths.read_spec():
                found = {"state": "ended", "reason": "there is no such allocation on this host"}
            else:
                found = self.ops.describe(self.paths)
            self._now = (now, found)
        return self._now[1]

    def check_open(self) -> None:
        """Refuse a task for an allocation that has ended, saying what to do instead."""
        found = self.describe()
        if found["state"] == "ended":
            raise Refusal(f"allocation {self.name} has ended ({found['reason']}): start a new "
                          f"one with %remote_alloc {self.name} -q HOST, or send the cell to "
                          "another host")

    def start(self, paths: TaskPaths, task_id: str) -> None:
        set_state(paths, State.SUBMITTED, launcher="allocation", allocation=self.name)
        self.paths.enqueue(task_id)
        self.mine.add(task_id)
        self.tell({"op": "poke"})

    def tell(self, message: dict[str, Any]) -> None:
        link = self.reach()
        if link is not None and not link.send(message):
            self.drop()

    def reach(self) -> WorkerLink | None:
        """The link to the worker, opened when it listens; while it cannot be reached, tried
        again after RECONNECT seconds, then less and less often (the queue works without
        it: a site may not let the login node reach compute nodes)."""
        if self.link is None and time.monotonic() - self.tried > self.backoff and \
                self.paths.worker.exists():  # it listens: worth a try
            self.tried = time.monotonic()
            self.link = WorkerLink.reach(self.paths)
            self.backoff = RECONNECT if self.link else min(MAX_BACKOFF, self.backoff * 2)
        return self.link

    def drop(self) -> None:
        if self.link is not None:
            self.broken.append(self.link)
            self.link = None

    def let_go(self) -> None:
        """Close the broken links (the agent no longer listens to them)."""
        for link in self.broken:
            link.close()
        self.broken.clear()

    def heard(self) -> list[str]:
        """What the worker said: the tasks that ended."""
        if self.link is None:
            return []
        messages = self.link.receive()
        if messages is None:
            self.drop()
            return []
        return [m["task"] for m in messages if m.get("event") == "ended"
                and isinstance(m.get("task"), str)]

    def kill(self, task_id: str, paths: TaskPaths) -> str:
        paths.cancel.touch()
        if self.paths.dequeue(task_id):
            set_state(paths, State.CANCELLED, "cancelled by the user")
            return "cancelled"
        self.tell({"op": "kill", "tasks": [task_id]})  # without a link, the worker sees the file
        return "cancelling"

    def review(self, paths: TaskPaths, record: dict[str, Any]) -> dict[str, Any]:
        """A task's state with what only the allocation can add."""
        state = record["state"]
        if state in FINAL_STATES:
            self.mine.discard(paths.root.name)  # its end is known, pushed or not
            if record.get("checked") or not (record.get("reason") or "").startswith("killed"):
                return record
            found = self.describe()  # killed by a signal: the end of the allocation, maybe
            if found.get("outcome") == State.TIMED_OUT:
                return set_state(paths, State.TIMED_OUT, self._walltime(found), checked=True)
            if found["state"] != "running" and \
                    time.time() - record.get("history", {}).get(state, 0) < VERDICT_WAIT:
                return {**record, "state": State.RUNNING}  # until the scheduler says why
            return set_state(paths, state, record.get("reason"), checked=True,
                             when=record.get("history", {}).get(state))
        found = self.describe()
        if found["state"] == "ended":
            if self.paths.dequeue(paths.root.name) or State.RUNNING not in record.get(
                    "history", {}):
                return set_state(paths, State.CANCELLED, f"allocation {self.name} ended before "
                                 f"the task started ({found['reason']})")
            if found.get("outcome") == State.TIMED_OUT:
                return set_state(paths, State.TIMED_OUT, self._walltime(found), checked=True)
            if paths.cancel.exists():
                return set_state(paths, State.CANCELLED, "cancelled by the user")
            return set_state(paths, State.LOST, f"allocation {self.name} ended while the task "
                             f"ran ({found['reason']})", checked=True)
        if state == State.SUBMITTED:
            return {**record, "reason": self._waiting(found)}
        return record

    def _walltime(self, found: dict[str, Any]) -> str:
        return f"allocation {self.name} reached its walltime ({found['reason']})"

    def _waiting(self, found: dict[str, Any]) -> str:
        if found["state"] == "running":
            return f"waiting for a free slot on allocation {self.name} ({found['slots']} at once)"
        since = time.time() - (found.get("submitted") or time.time())
        reason = f", {found['reason']}" if found.get("reason") else ""
        return (f"waiting for allocation {self.name}: {found['state']} {_minutes(since)}"
                f"{reason}")


class WorkerLink:
    """The agent's end of a link to a worker, once both proved they know the secret."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader()

    @classmethod
    def reach(cls, paths: AllocPaths) -> WorkerLink | None:
        """Connect and prove ourselves; None when the worker does not listen (yet), cannot
        be reached from here, or does not prove that it knows the secret."""
        worker = read_json(paths.worker)
        if not worker:
            return None
        try:
            key = paths.key()
            sock = socket.create_connection((worker["address"], worker["port"]),
                                            timeout=CONNECT_TIMEOUT)
        except (OSError, KeyError, TypeError, ValueError):
            return None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            words = _line(sock).split()
            if len(words) != 4 or " ".join(words[:3]).encode() != GREETING:
                raise ConnectionError("not a worker")
            ours = new_nonce()
            sock.sendall(f"{proof(key, words[3], 'agent')} {ours}\n".encode())
            answer = _line(sock).split()
            if len(answer) != 2 or answer[0] != "ok" or \
                    not check_proof(key, ours, "worker", answer[1]):
                raise ConnectionError("the worker did not prove itself")
            sock.setblocking(False)
            return cls(sock)
        except (OSError, ConnectionError, ValueError):
            sock.close()
            return None

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: dict[str, Any]) -> bool:
        try:
            self.sock.setblocking(True)
            self.sock.sendall(encode(message))
            return True
        except OSError:
            return False
        finally:
            try:
                self.sock.setblocking(False)
            except OSError:
                pass

    def receive(self) -> list[dict[str, Any]] | None:
        """The messages that have come; None once the worker has gone."""
        messages = []
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return messages
            except OSError:
                return None
            if not data:
                return None
            try:
                messages += [m for m, _ in self.reader.feed(data)]
            except ValueError:
                return None

    def wait_closed(self, timeout: float) -> None:
        """Until the worker closes the link (it is done) or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(1 << 16):
                    return
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


def _line(sock: socket.socket) -> str:
    """One handshake line (at most LINE_MAX bytes), read before anything is trusted."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk or len(data) >= LINE_MAX:
            raise ConnectionError("the worker closed the link, or said too much")
        data += chunk
    return data.decode(errors="replace")


def _said(ended: dict[str, Any]) -> tuple[str, str]:
    """An ended allocation's state and reason, from its `ended.json` record."""
    return "ended", f"{ended['state']}: {ended['reason']}"


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
