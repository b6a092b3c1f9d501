"""The resident agent: one small process per host and kernel, serving every request.

Started once per connection (a local pipe for `localhost`, an SSH channel otherwise), it
answers requests over stdin/stdout: start a task, report the state and new output of many
tasks at once, kill, purge, read logs. A request costs a message on an open pipe instead of a
process or remote-shell start. A task starts in a runner its warm process forked ahead
(warm.py), or cold, forked from the agent itself (the runner is already imported); either way
in a new session, so that it outlives the agent. When a task ends the agent tells the kernel
at once, with its final status, without waiting for the next poll. Every operation a request
may name is in one table (`Agent.operations`); the file and batch operations are parts the
agent holds (`fileops.FileOps`, `batchops.BatchOps`).

Single-threaded on purpose: it forks, and forking a threaded process is unsafe.
"""

from __future__ import annotations

import errno
import json
import os
import select
import selectors
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..wire.protocol import MARKER, FrameReader, encode_header, widen_pipe
from ..wire.states import FINAL_STATES, State
from ..wire.taskdir import (
    RESULT_FILES,
    TASKS,
    Refusal,
    TaskPaths,
    make_task_dir,
    path_problem,
    read_exitcode,
    read_json,
    read_state,
    set_state,
    valid_task_id,
    workdir_message,
    workdir_refusal,
)
from . import runner
from .allocops import AllocOps, Served
from .batchops import QUERY_INTERVAL, BatchOps, silence
from .exchange import Exchange, FileRange, deaf_wait, read_range, send_range
from .fileops import FileOps, pid_alive
from .follow import follow_outputs
from .proctitle import set_name
from .queuecache import QueueCache
from .sweepops import SweepOps
from .warm import WarmPool
from .zygote import max_fd

DEBUG_ENV = "REMOTE_MAGIC_DEBUG"  # set: the agent writes debug records to its log
MAX_CHUNK = 256 * 1024  # bytes of one output stream returned per task per status request
MAX_EVENTS = 2 * 1024 * 1024  # bytes of display events returned per task per status request
PUSH_MAX = 1024 * 1024  # result files up to this size each are pushed with a task's end
PUSH_REPLY_MAX = 8 * 1024 * 1024  # bytes of result files one status reply carries at most
START_GRACE = 30.0  # a submitted process task with no supervisor after this long is lost

try:  # the runner pickles with it: import once here, not once per task
    import cloudpickle  # noqa: F401
except ImportError:  # pragma: no cover - reported by `remote-magic test`
    pass


# Operations that move file contents: they get the request's Exchange (see exchange.py).
WITH_BYTES = frozenset({"stage", "stage_many", "put_chunk", "get", "read", "status",
                        "follow"})


class Agent:
    def __init__(self, workdir: str, resident: bool = True,
                 allocation: str | None = None) -> None:
        self.workdir = Path(os.path.expanduser(workdir)).absolute()
        self.tasks_dir = self.workdir / TASKS
        self.children: dict[int, str] = {}  # supervisor pid -> task id
        # Where each unfinished task's output was last read to for the kernel (None: it asked
        # for none), and whether it wants the result files pushed: a task's end is pushed with
        # the rest, and the kernel need not ask.
        self.served: dict[str, tuple[dict[str, int] | None, bool]] = {}
        self.hostname = socket.gethostname()
        self.files = FileOps(self.workdir, self.tasks_dir, self.paths, resident)
        self.batch = BatchOps(self.paths, QueueCache(self.workdir))
        self.allocs = AllocOps(self.workdir, self.batch)
        self.allocated: dict[str, Served] = {}  # allocations whose tasks this agent serves
        self.sweeps = SweepOps(self.workdir, self.files, self.batch, self.paths, self.op_start)
        self.allocation = allocation  # where its tasks start, when it serves an allocation
        self.warm: WarmPool | None = None  # a resident agent's warm runners (warm.py)
        # waits up to so many seconds, True if the kernel spoke meanwhile (see Exchange.wait)
        self.kernel_spoke: Callable[[float], bool] = deaf_wait
        files = self.files
        # Every operation a request may name, in one place: the agent's whole vocabulary.
        self.operations: dict[str, Callable[..., Any]] = {
            "hello": self.op_hello, "mkdir": self.op_mkdir, "start": self.op_start,
            "submit": self.op_submit, "status": self.op_status_pushed, "kill": self.op_kill,
            "purge": self.op_purge, "list": self.op_list, "log": self.op_log,
            "stage": self.op_stage, "commit": files.op_commit, "unstage": files.op_unstage,
            "put_open": files.op_put_open, "put_chunk": files.op_put_chunk,
            "put_close": files.op_put_close, "get": files.op_get, "read": files.op_read,
            "follow": self.op_follow,
            "glob": files.op_glob, "alloc_start": self.allocs.op_alloc_start,
            "alloc_list": self.allocs.op_alloc_list, "alloc_stop": self.allocs.op_alloc_stop,
            "shared_has": self.sweeps.op_shared_has, "stage_many": self.sweeps.op_stage_many,
            "submit_array": self.sweeps.op_submit_array,
        }
        # A work directory another user could have written is never used: every request is
        # answered with why, and how to fix it (nothing in it is read, nothing is written).
        self.refusal = workdir_refusal(self.workdir, [(TASKS, "dir")], create=True)
        if self.refusal is None:  # not created: say why now (no permission, say)
            self.tasks_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # ------------------------------------------------------------ plumbing

    def paths(self, task_id: str) -> TaskPaths:
        """The task's files, once its directory is known to be ours alone (0700): what the
        runner unpickles, and the pids a kill signals, come from there."""
        root = self.tasks_dir / valid_task_id(task_id)
        problem = path_problem(str(root), "private")
        if problem is not None:
            raise Refusal(workdir_message({**problem, "workdir": str(self.workdir)}))
        return TaskPaths(root)

    def handle(self, message: dict[str, Any], payload: bytes,
               send: Callable[[dict[str, Any], bytes | FileRange], None]) -> None:
        """Run one request; answer it unless it is one-way (no id). A refusal is answered as
        such: its message is for the user as it stands."""
        request_id, op = message.get("id"), message.get("op")
        exchange = Exchange(payload, stream=lambda chunk: send({"stream": request_id}, chunk),
                            wait=self.kernel_spoke)
        method = self.operations.get(op) if isinstance(op, str) else None
        if self.refusal is not None:
            reply = {"ok": False, "error": str(self.refusal), "refused": True}
        elif method is None:
            reply = {"ok": False, "error": f"unknown operation {op!r}"}
        else:
            try:
                args = message.get("args", {})
                result = method(exchange, **args) if op in WITH_BYTES else method(**args)
                reply = {"ok": True, "result": result}
            except Refusal as exc:
                reply = {"ok": False, "error": str(exc), "refused": True}
            except Exception as exc:  # noqa: BLE001 - the kernel shows it; the agent lives on
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if request_id is not None:
            reply["id"] = request_id
            send(reply, exchange.payload_out)

    # ------------------------------------------------------------ operations

    def op_hello(self) -> dict[str, Any]:
        return {"python": "{}.{}.{}".format(*sys.version_info[:3]), "executable": sys.executable,
                "pid": os.getpid(), "hostname": self.hostname, "workdir": str(self.workdir),
                "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else os.cpu_count(),
                "home": os.path.expanduser("~")}

    def op_follow(self, exchange: Exchange, task: str, min_size: int) -> dict[str, Any]:
        """Stream a task's outputs file as its runner writes it (follow.py). It holds this
        agent until the file is whole or the task ends: the kernel asks an agent of its own."""
        return follow_outputs(self.paths(task), exchange, min_size)

    def op_mkdir(self, task: str) -> str:
        return str(make_task_dir(self.paths(task).root).root)

    def op_stage(self, exchange: Exchange, task: str, files: list[dict[str, Any]],
                 size: int = 0, commit: bool = False, start: bool = False,
                 push: bool | None = None) -> dict[str, Any]:
        """Stage a task (fileops); a whole small task that is committed in the same request may
        be started in it too (`start`, answered under "started" as `op_start` answers, and
        followed for the kernel with `push` as there): its round trip is then the only one
        between the kernel and a running task, and for a short task the only one at all."""
        answer = self.files.op_stage(exchange, task, files, size, commit)
        if start and commit:
            answer["started"] = self.op_start(task, push)
        return answer

    def op_start(self, task: str, push: bool | None = None) -> dict[str, Any]:
        """Start a staged task; if another kernel started the identical task first, answer
        with its state ("attached"), and the caller follows that run.

        `push` (not None): the kernel follows the task from its start, as a status request
        would have it (all its output from the beginning; the result files too if True), so
        the end reaches it with all it needs and no status request has to come first. The
        answer says so ("served")."""
        paths = self.paths(task)
        if not paths.spec.exists():
            raise FileNotFoundError(f"task {task} is not staged (no spec in {paths.root})")
        if self.allocation is not None:  # refused before it is claimed, if the allocation ended
            served = self.served_allocation(self.allocation)
            served.check_open()
        found = self.files.claim(paths, task)
        if found is not None:
            return {"pid": None, "attached": found}
        try:
            answer: dict[str, Any] = {"pid": None}
            if self.allocation is not None:
                served.start(paths, task)
            else:
                set_state(paths, State.SUBMITTED, launcher="process", host=self.hostname)
                answer["pid"] = self.launch(paths, task)
        except BaseException:
            paths.claim.unlink(missing_ok=True)  # not started: a retry may claim it again
            raise
        if push is not None:
            self.served[task] = (dict.fromkeys(("stdout", "stderr", "events"), 0), bool(push))
            answer["served"] = True
        return answer

    def launch(self, paths: TaskPaths, task: str) -> int | None:
        """Start a task on this machine: in the ready warm runner, or cold (its supervisor's
        pid). An allocation's worker starts its tasks here too."""
        if self.warm is not None and self.warm.offer(task):
            return None
        return self._fork_supervisor(paths, task)

    def served_allocation(self, name: str) -> Served:
        served = self.allocated.get(name)
        if served is None:
            served = self.allocated[name] = Served(self.allocs, name)
        return served

    def _fork_supervisor(self, paths: TaskPaths, task: str) -> int:
        """Start a task cold: a supervisor forked from the agent, which forks the runner."""
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            self._become_supervisor(paths)
        self.children[pid] = task
        return pid

    def start_overdue(self) -> None:
        """Tasks no warm runner took in time start cold (unless cancelled meanwhile)."""
        if self.warm is None:
            return
        for task in self.warm.overdue():
            try:
                paths = self.paths(task)
                if not paths.cancel.exists():
                    self._fork_supervisor(paths, task)
            except Exception:  # noqa: BLE001 - the agent lives on; the task's next status
                continue  # finds no process for it and says so

    def op_submit(self, task: str, *args: Any, **options: Any) -> dict[str, Any]:
        """Submit a staged task as a batch job, once, however many kernels staged it."""
        paths = self.paths(task)
        if not paths.spec.exists():
            raise FileNotFoundError(f"task {task} is not staged (no spec in {paths.root})")
        found = self.files.claim(paths, task)
        if found is not None:
            return {"job_id": read_state(paths).get("job_id"), "attached": found}
        try:
            return self.batch.op_submit(task, *args, **options)
        except BaseException:
            paths.claim.unlink(missing_ok=True)  # not submitted: a retry may claim it again
            raise

    def _become_supervisor(self, paths: TaskPaths) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setsid()
            null = os.open(os.devnull, os.O_RDONLY)
            log = os.open(paths.stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.closerange(3, max_fd())
            code = runner.supervise(str(paths.root))
        finally:
            os._exit(code)

    def op_status(self, tasks: dict[str, Any], push: bool = False,
                  scheduler_poll: float | None = None) -> dict[str, Any]:
        """State, progress and new output of many tasks: one request, one poll. With `push`,
        the end of each task comes with its result files when they are small (a kernel that
        copies them would otherwise ask). `scheduler_poll`: the host's least interval between
        scheduler queries (seconds), shared with the user's other kernels (queuecache.py)."""
        if scheduler_poll is not None:
            self.batch.interval = max(QUERY_INTERVAL, float(scheduler_poll))
        records: dict[str, dict[str, Any]] = {}
        answers: dict[str, Any] = {}
        for task_id in tasks:
            paths = self.paths(task_id)
            if not paths.root.is_dir():
                answers[task_id] = {"state": State.LOST, "history": {},
                                    "reason": "the task directory is gone from the host"}
                continue
            record = read_state(paths)
            if record.get("launcher") in (None, "process") and \
                    record["state"] not in FINAL_STATES:
                record = self._check_alive(paths, record)
            elif record.get("launcher") == "allocation":
                record = self.served_allocation(record["allocation"]).review(paths, record)
            records[task_id] = record
        batch = {t: r for t, r in records.items()
                 if r.get("launcher") not in (None, "process", "allocation")}
        records.update(self.batch.states(batch))
        for task_id, record in records.items():
            answers[task_id] = answer = self._report(self.paths(task_id), record, tasks[task_id])
            if record["state"] in FINAL_STATES:
                self.served.pop(task_id, None)
            else:
                self.served[task_id] = (None if tasks[task_id] is None else {
                    s: answer[f"{s}_end"] for s in ("stdout", "stderr", "events")}, push)
        return answers

    def op_status_pushed(self, exchange: Exchange, tasks: dict[str, Any], push: bool = False,
                         scheduler_poll: float | None = None) -> dict[str, Any]:
        """`op_status`, and with `push` each task found ended carries its small result files
        (`files`, from `payload_from` in the reply's bytes, up to PUSH_REPLY_MAX in all): a
        poll that meets the end before the agent's own event does (which then finds nothing
        to push) is not followed by a request for them."""
        answers = self.op_status(tasks, push, scheduler_poll)
        if push:
            for task_id, answer in answers.items():
                if answer["state"] in FINAL_STATES and answer["state"] != State.LOST:
                    found = self._small_results(task_id)
                    if found is not None and \
                            len(exchange.payload_out) + len(found[1]) <= PUSH_REPLY_MAX:
                        answer["files"], answer["payload_from"] = \
                            found[0], len(exchange.payload_out)
                        exchange.payload_out += found[1]
        return answers

    def ended(self, task_id: str) -> tuple[dict[str, Any], bytes]:
        """The event telling the kernel that a task ended, and its payload: with its final
        status, from where the kernel last read, when the kernel has asked about it before;
        and the result files, when it asked for them and they are small."""
        event: dict[str, Any] = {"event": "finished", "task": task_id}
        if task_id not in self.served:
            return event, b""
        offsets, push = self.served.pop(task_id)
        try:
            paths = self.paths(task_id)
            record = read_state(paths)
            if record["state"] not in FINAL_STATES:
                return event, b""
            event["status"] = self._report(paths, record, offsets)
            event["from"] = offsets
        except Exception:  # noqa: BLE001 - the kernel asks, and hears why
            return event, b""
        found = self._small_results(task_id) if push else None
        if found is None:
            return event, b""
        event["files"] = found[0]
        return event, found[1]

    def _small_results(self, task_id: str) -> tuple[list[dict[str, Any]], bytes] | None:
        """An ended task's result files when each is small enough to go with its end."""
        exchange = Exchange()
        try:
            listing = self.files.op_read(exchange, task_id, list(RESULT_FILES), PUSH_MAX)
        except Exception:  # noqa: BLE001 - the kernel asks for them, and hears why
            return None
        if not all(entry["inline"] for entry in listing):
            return None
        return listing, exchange.payload_out

    def _report(self, paths: TaskPaths, record: dict[str, Any],
                offsets: dict[str, int] | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": record["state"], "reason": record.get("reason"),
            "history": record.get("history", {}), "progress": read_json(paths.progress),
            "exitcode": read_exitcode(paths), "job_id": record.get("job_id"),
        }
        if offsets is not None:
            out["output_more"] = False
            for stream in ("stdout", "stderr"):
                path = getattr(paths, stream)
                text, end = read_chunk(path, offsets.get(stream, 0))
                out[stream] = text
                out[f"{stream}_end"] = end
                out["output_more"] |= bool(text) and end < _file_size(path)
            # Read after the streams: a display stamped before the end of the output read
            # above was written before that output, so it is in the file by now.
            out["events"], out["events_end"], out["events_more"] = read_events(
                paths.events, offsets.get("events", 0))
        return out

    def _check_alive(self, paths: TaskPaths, record: dict[str, Any]) -> dict[str, Any]:
        """Say `lost` only when neither the process nor its files can say anything else."""
        if record.get("launcher") != "process" or record.get("host") != self.hostname:
            return self._check_heartbeat(paths, record)
        pids = read_json(paths.pids)
        if pids is None:
            started = record.get("history", {}).get(State.SUBMITTED, time.time())
            if time.time() - started < START_GRACE:
                return record
        elif pid_alive(pids["supervisor"]) or pid_alive(pids["runner"]):
            return record
        record = read_state(paths)  # it may have ended between the two reads
        if record["state"] in FINAL_STATES:
            return record
        code = read_exitcode(paths)
        if code is not None:
            return runner.settle(paths, code)
        return set_state(paths, State.LOST, "the task's processes are gone and left no outcome")

    def _check_heartbeat(self, paths: TaskPaths, record: dict[str, Any]) -> dict[str, Any]:
        age = silence(paths, record)
        if age is not None and read_state(paths)["state"] == State.RUNNING:
            return set_state(paths, State.LOST, f"no heartbeat for {age:.0f} s: the node died")
        return record

    def op_kill(self, tasks: list[str]) -> dict[str, str]:
        outcome = {}
        jobs = []  # batch jobs: one cancel command for all of a scheduler's (a whole sweep)
        for task_id in tasks:
            paths = self.paths(task_id)
            record = read_state(paths)
            if record["state"] in FINAL_STATES:
                outcome[task_id] = f"already {record['state']}"
                continue
            if record.get("launcher") == "allocation":
                outcome[task_id] = self.served_allocation(record["allocation"]).kill(task_id,
                                                                                     paths)
                continue
            if record.get("launcher") not in (None, "process") and record.get("job_id"):
                jobs.append((task_id, paths, record))
                continue
            paths.cancel.touch()
            target = self._stop_target(task_id, read_json(paths.pids))
            if target is not None and pid_alive(abs(target)):
                os.kill(target, signal.SIGTERM)
                outcome[task_id] = "cancelling"
            else:
                runner.settle(paths, read_exitcode(paths))
                outcome[task_id] = read_state(paths)["state"]
        if jobs:
            outcome.update(self.batch.cancel(jobs))
        return outcome

    def _stop_target(self, task_id: str, pids: dict[str, Any] | None) -> int | None:
        """Whom a cancel's SIGTERM goes to: a cold task's supervisor (which stops its
        runner's process group, then kills it after a grace period), or the process group
        (negative) of a warm runner, whose keeper supervises many (keeper.py)."""
        if pids:
            return -pids["runner"] if pids.get("keeper") else pids["supervisor"]
        cold = next((pid for pid, task in self.children.items() if task == task_id), None)
        if cold is not None or self.warm is None:
            return cold
        warm = self.warm.runner_of(task_id)  # took its task, has not written pids.json yet
        return None if warm is None else -warm

    def op_purge(self, tasks: list[str], force: bool = False) -> dict[str, str]:
        outcome = {}
        for task_id in tasks:
            paths = self.paths(task_id)
            if not paths.root.exists():
                outcome[task_id] = "absent"
                continue
            state = read_state(paths)["state"]
            if state not in FINAL_STATES and state != State.PREPARED and not force:
                outcome[task_id] = f"still {state}: kill it first"
                continue
            remove_tree(paths.root)
            outcome[task_id] = "removed"
        return outcome

    def op_list(self) -> list[dict[str, Any]]:
        found = []
        for entry in sorted(self.tasks_dir.iterdir()):
            try:
                paths = self.paths(entry.name)
            except ValueError:
                continue
            record = read_state(paths)
            found.append({"task": entry.name, "state": record["state"],
                          "mtime": entry.stat().st_mtime})
        return found

    def op_log(self, task: str, stream: str = "stdout", tail: int = 1 << 20) -> str:
        if stream not in ("stdout", "stderr"):
            raise ValueError("stream must be stdout or stderr")
        path = getattr(self.paths(task), stream)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return ""
        return read_chunk(path, max(0, size - tail), limit=tail)[0]

    # ------------------------------------------------------------ children

    def reap(self) -> list[str]:
        """Collect ended supervisors; their tasks are reported as finished at once."""
        finished = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            task_id = self.children.pop(pid, None)
            if task_id is None:  # the warm process, if not a stray
                if self.warm is not None:
                    self.warm.ended(pid)
                continue
            paths = self.paths(task_id)
            pids = read_json(paths.pids)
            if read_exitcode(paths) is None and not (pids and pid_alive(pids["runner"])):
                runner.settle(paths, None)
            finished.append(task_id)
        return finished


def read_chunk(path: Path, offset: int, limit: int = MAX_CHUNK) -> tuple[str, int]:
    """Text from `offset`, cut at a character boundary; returns it and the next offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(limit)
    except FileNotFoundError:
        return "", offset
    keep = _utf8_complete(data)
    return data[:keep].decode("utf-8", errors="replace"), offset + keep


def read_events(path: Path, offset: int, limit: int = MAX_EVENTS
                ) -> tuple[list[dict[str, Any]], int, bool]:
    """Whole lines of the events file from `offset` (at least one, however long): the events,
    the next offset, and whether more lines follow."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(limit)
            while data and not data.endswith(b"\n") and b"\n" not in data:
                more = f.read(limit)
                if not more:
                    break
                data += more
            more_follow = bool(f.read(1))
    except FileNotFoundError:
        return [], offset, False
    complete = data[:data.rfind(b"\n") + 1]
    events = [json.loads(line) for line in complete.splitlines() if line.strip()]
    return events, offset + len(complete), more_follow or len(complete) < len(data)


def _utf8_complete(data: bytes) -> int:
    """Length of `data` without a multi-byte character cut off at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # a lead byte or ASCII
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 6 else 3 if byte >> 4 == 14 else 4
            return len(data) if need <= back else len(data) - back
    return len(data)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def remove_tree(root: Path, attempts: int = 5) -> None:
    """Remove a task directory whose process may still be finishing: a task's outcome is
    recorded before its process has exited, and the exit code is written a moment later, so
    a file can vanish (a temporary name renamed) or appear while the tree is walked. Those
    are tried again; any other error, or a last failure, is raised."""
    for _ in range(attempts - 1):
        try:
            shutil.rmtree(root)
            return
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
        time.sleep(0.1)
    if root.exists():
        shutil.rmtree(root)


def serve_once(workdir: str) -> int:
    """Answer the requests of one remote command (stdin holds them all), then exit.

    The fallback for hosts where the resident agent cannot run: each request costs a remote
    command, but every operation is the same code.
    """
    agent = Agent(workdir, resident=False)
    out = sys.stdout.buffer
    out.write(MARKER)

    def send(message: dict[str, Any], payload: bytes | FileRange = b"") -> None:
        if isinstance(payload, FileRange):
            payload = read_range(payload)
        out.write(encode_header(message, len(payload)))
        out.write(payload)

    for message, payload in FrameReader().feed(sys.stdin.buffer.read()):
        agent.handle(message, payload, send)
    out.flush()
    return 0


def serve(workdir: str, warm: bool = True, allocation: str | None = None) -> int:
    """Answer framed requests on stdin until it closes; with `warm`, tasks start in runners
    forked ahead (warm.py); with `allocation`, on that allocation's node (allocops.py)."""
    agent = Agent(workdir, allocation=allocation)
    wake_r, wake_w = socket.socketpair()
    for sock in (wake_r, wake_w):
        sock.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    os.set_blocking(0, False)
    for fd in (0, 1):  # the pipes from and to sshd (or the kernel): wider for bulk transfers
        widen_pipe(fd)
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    reader = FrameReader()
    out = sys.stdout.buffer
    agent.kernel_spoke = lambda seconds: bool(select.select([0], [], [], seconds)[0])
    set_name("rm-agent")  # `pkill rm-agent` stops the agent, not the tasks (see proctitle)
    out.write(MARKER)  # whatever a login shell printed before us ends here
    out.flush()
    if agent.refusal is None:
        agent.files.sweep()
        agent.sweeps.sweep_leftovers(time.time())
    if agent.refusal is None and warm and allocation is None:
        agent.warm = WarmPool(agent.workdir, agent.tasks_dir)
        agent.warm.start()
        selector.register(agent.warm.events_r, selectors.EVENT_READ)

    def send(message: dict[str, Any], payload: bytes | FileRange = b"") -> None:
        if isinstance(payload, FileRange):  # from the page cache to the pipe, not via Python
            out.write(encode_header(message, payload.size))
            out.flush()
            send_range(out.fileno(), payload)
            return
        out.write(encode_header(message, len(payload)))
        if payload:
            out.write(payload)
        out.flush()

    links: dict[Served, socket.socket | None] = {}
    spliced: tuple[Any, int] | None = None  # an upload, and the bytes of its chunk to come

    def watch_links() -> float | None:
        """Listen to the links to allocation workers as they open and close; how soon to try
        again to reach a worker that tasks were sent to but that could not be reached."""
        retry = None
        for served in agent.allocated.values():
            sock = served.link.sock if served.link is not None else None
            if links.get(served) is not sock:
                if links.get(served) is not None:
                    selector.unregister(links[served])
                served.let_go()
                if sock is not None:
                    selector.register(sock, selectors.EVENT_READ, served)
                links[served] = sock
            if sock is None and served.mine:
                retry = 0.2  # a look for the worker's address file; a connection is rarer
        return retry

    while True:
        waits = [t for t in (agent.warm.timeout() if agent.warm else None, watch_links())
                 if t is not None]
        for key, _ in selector.select(min(waits) if waits else None):
            if isinstance(key.data, Served):
                for task_id in key.data.heard():
                    if task_id in agent.served or task_id in key.data.mine:
                        key.data.mine.discard(task_id)
                        send(*agent.ended(task_id))
            elif key.fileobj == 0:
                try:
                    if spliced is not None:  # an upload chunk's rest: from the pipe to its file
                        upload, left = spliced
                        moved = upload.receive(0, left)
                        if not moved:
                            return 0
                        spliced = (upload, left - moved) if left > moved else None
                        continue
                    data = os.read(0, 1 << 20)
                except BlockingIOError:
                    continue
                if not data:
                    return 0
                for message, payload in reader.feed(data):
                    agent.handle(message, payload, send)
                # a partial frame's header is read only while an upload is open
                upload = agent.files.receiving(reader.pending() or {}) \
                    if agent.files.uploading else None
                if upload is not None:
                    came, rest = reader.take()
                    upload.write(came)
                    spliced = (upload, rest)
            elif agent.warm is not None and key.fileobj == agent.warm.events_r:
                for task_id in agent.warm.events():
                    send(*agent.ended(task_id))
            else:
                try:
                    wake_r.recv(4096)
                except BlockingIOError:
                    pass
                for task_id in agent.reap():
                    send(*agent.ended(task_id))
        agent.start_overdue()
        for served in agent.allocated.values():
            if served.link is None and served.mine:
                served.reach()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m remote_magic.host.agent")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--once", action="store_true",
                        help="answer the requests on stdin, then exit (no resident process)")
    parser.add_argument("--cold", action="store_true",
                        help="start every task in a fresh fork: no warm runners")
    parser.add_argument("--allocation", help="start tasks on this allocation's node")
    args = parser.parse_args(argv)
    if os.environ.get(DEBUG_ENV):  # the kernel logs at debug level: so do we, to agent.log
        import logging

        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                            format="%(asctime)s rm-agent %(name)s: %(message)s")
    if args.once:
        return serve_once(args.workdir)
    return serve(args.workdir, not args.cold, args.allocation)


if __name__ == "__main__":
    sys.exit(main())
