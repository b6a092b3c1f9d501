"""The keeper: one supervisor for every warm runner of one generation of the warm process.

A supervisor forked per task cost a fork of the warm process, an exit and its own copied
pages for every task: about a sixth of the CPU of a burst of trivial tasks here. The keeper
(`rm-keeper`) is forked once from the warm process (again each time the warm process has
imported more), in a session of its own and without the warm process's death signal, so that
tasks outlive the agent as before. It keeps one runner forked and waiting (`rm-ready-run`) and
forks the next one when the last has taken a task and that task ended, when another task waits
on the task pipe, or after DEFER seconds, whichever comes first (a fork costs milliseconds of
CPU, which a task just started would otherwise wait for).

For each running task it does what a cold supervisor does: it reaps the runner, records the
final state and then the exit code (the exit code last: once it is there, the keeper is done
with the task), and beats the task's heartbeat from its second second on. A cancel reaches
the runner's process group from the agent (SIGTERM); a runner still there KILL_GRACE seconds
after its cancel file appeared gets SIGKILL from here. When the warm process closes its socket
(it renewed its imports, or the agent is gone), the keeper forks nothing more and exits once
its running tasks have ended.

Each ready runner has a socket to the keeper: it says `took TASK` there first when it takes a
task (so the keeper knows it whatever happens next), and now and then `pages ...`: the memory
pages it wrote (prefault.py), which the next ready runners copy ahead while they wait.
"""

from __future__ import annotations

import gc
import os
import select
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..wire.taskdir import HEARTBEAT_INTERVAL, TaskPaths, valid_task_id, write_atomic, write_json
from . import prefault, runner
from .learned import installed_roots, learnable, report
from .proctitle import set_name

RECORD = 128  # bytes per task record on the task pipe (task ids have at most 64 characters)
DEFER = 1.0  # seconds at most between a runner taking a task and the next runner's fork
REPORT_EVERY = 25  # runners between two reports of the pages a task wrote (prefault.py)


@dataclass
class Running:
    task_id: str
    paths: TaskPaths
    sock: socket.socket
    started: float = field(default_factory=time.monotonic)
    cancel_seen: float | None = None


class Keeper:
    """Forks the ready runners of one generation of the warm process and supervises them."""

    def __init__(self, tasks_dir: Path, task_r: int, events_w: int, learn_w: int,
                 warm: socket.socket) -> None:
        self.tasks_dir, self.task_r, self.events_w, self.learn_w, self.warm = \
            tasks_dir, task_r, events_w, learn_w, warm
        self.idle: dict[socket.socket, int] = {}  # a waiting runner's socket -> its pid
        self.running: dict[int, Running] = {}  # runner pid -> its task
        self.buffers: dict[socket.socket, bytes] = {}
        self.pages: prefault.Ranges = []
        self.forks = 0
        self.report_due = True
        self.due: float | None = None  # when the next runner is forked, unless needed sooner
        self.retired = False

    def run(self) -> int:
        set_name("rm-keeper")
        os.setsid()  # tasks outlive the agent, as under a cold supervisor
        self.wake_r, wake_w = os.pipe()
        for fd in (self.wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the selector
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.warm, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self.fork_runner()
        beat = time.monotonic() + HEARTBEAT_INTERVAL
        while not (self.retired and not self.running and not self.idle):
            wake = beat if self.due is None else min(beat, self.due)
            for key, _ in self.selector.select(max(0.0, wake - time.monotonic())):
                if key.fileobj == self.warm:
                    self.hear_warm()
                elif key.fileobj == self.wake_r:
                    self.reap()
                elif key.fileobj == self.task_r:
                    self.fork_due()  # a task waits, and no runner is there to take it
                else:
                    self.hear(key.fileobj)  # type: ignore[arg-type]
            now = time.monotonic()
            if self.due is not None and now >= self.due:
                self.fork_due()
            if now >= beat:
                self.beat(now)
                beat = now + HEARTBEAT_INTERVAL
        return 0

    # ------------------------------------------------------------ runners

    def fork_runner(self) -> None:
        if self.retired:
            return
        if self.due is not None:  # forked now: the task pipe is the new runner's to watch
            self.due = None
            self.selector.unregister(self.task_r)
        gc.freeze()  # a collection in the runner does not copy the pages of what we hold
        self.forks += 1
        tell_pages = self.report_due or self.forks % REPORT_EVERY == 0
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                ours.close()
                for sock in [*self.idle, *self.buffers, self.warm]:
                    sock.close()  # a runner's end of file must not wait for a sibling
                os.close(self.wake_r)
                os.close(self.selector.fileno())
                code = ready_runner(self.tasks_dir, self.task_r, theirs, self.events_w,
                                    self.learn_w, self.pages, tell_pages)
            finally:
                os._exit(code)
        theirs.close()
        self.idle[ours] = pid
        self.buffers[ours] = b""
        self.selector.register(ours, selectors.EVENT_READ)

    def fork_due(self) -> None:
        if self.due is not None or not self.idle:
            self.fork_runner()

    def hear(self, sock: socket.socket) -> None:
        """A runner spoke: it took a task, reported pages, or ended (end of file)."""
        if sock not in self.buffers:  # dropped since select() named it (a catch-up read it)
            return
        try:
            data = sock.recv(1 << 16)
        except OSError:  # a reset, or nothing left to read from an ended runner
            data = b""
        if not data:
            self.drop(sock)
            return
        *lines, self.buffers[sock] = (self.buffers[sock] + data).split(b"\n")
        for line in lines:
            words = line.decode(errors="replace").split()
            if words[:1] == ["took"] and len(words) == 2 and sock in self.idle:
                pid = self.idle.pop(sock)
                try:
                    paths = TaskPaths(self.tasks_dir / valid_task_id(words[1]))
                except ValueError:
                    continue
                self.running[pid] = Running(words[1], paths, sock)
                if not self.idle and self.due is None and not self.retired:  # the next, when due
                    self.due = time.monotonic() + DEFER
                    self.selector.register(self.task_r, selectors.EVENT_READ)
            elif words[:2] == ["pages", "run"]:
                self.pages = prefault.decode(words[2:])
                self.report_due = False

    def drop(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        self.buffers.pop(sock, None)
        if self.idle.pop(sock, None) is not None and not self.idle:
            self.fork_runner()  # a waiting runner ended: another takes its place (unless retired)
        sock.close()

    def reap(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.running:  # a quick task: its "took" may still be unread
                sock = next((s for s, p in self.idle.items() if p == pid), None)
                if sock is not None:
                    self.catch_up(sock)
            task = self.running.pop(pid, None)
            if task is not None:
                self.finish(pid, task, os.waitstatus_to_exitcode(status))
                self.fork_due()  # the CPU the task used is free

    def finish(self, pid: int, task: Running, code: int | None) -> None:
        """What a cold supervisor does when its runner ends: the final state, then the exit
        code (last: once it is there, nothing here writes to the task's folder again)."""
        try:
            runner.settle(task.paths, code)
            if code is not None:
                write_atomic(task.paths.exitcode, f"{code}\n")
        except OSError:  # its folder is gone (purged): nothing to record
            pass
        if task.sock in self.buffers:  # a page report still unread comes first
            self.catch_up(task.sock)
        tell(self.events_w, f"done {pid} {task.task_id}\n")

    def catch_up(self, sock: socket.socket) -> None:
        """Read what an ended runner said and we have not read yet (its socket is then
        dropped: nothing more will come)."""
        sock.setblocking(False)
        self.hear(sock)

    def beat(self, now: float) -> None:
        """Heartbeats of the tasks running for a while, and SIGKILL for a cancelled one that
        is still there KILL_GRACE seconds on; a task whose runner is gone unnoticed is
        finished here rather than waited for (the keeper would never end)."""
        for pid, task in list(self.running.items()):
            try:  # ended and not yet reaped, or (a safety net) reaped unnoticed
                ended, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                ended, status = pid, None
            if ended:
                del self.running[pid]
                self.finish(pid, task, None if status is None else
                            os.waitstatus_to_exitcode(status))
                continue
            if now - task.started >= HEARTBEAT_INTERVAL:
                try:
                    task.paths.heartbeat.touch()
                except OSError:
                    pass
            if task.cancel_seen is None:
                if task.paths.cancel.exists():
                    task.cancel_seen = now
            elif now - task.cancel_seen >= runner.KILL_GRACE:
                runner.signal_group(pid, signal.SIGKILL)

    def hear_warm(self) -> None:
        try:
            data = self.warm.recv(64)
        except OSError:
            data = b""
        if data:
            return
        # Retired (the warm process renewed its imports) or the agent is gone: the idle
        # runners end (end of file on their sockets) and the running ones are seen to the
        # end. Only our half is closed: a runner that took a task just now still says so.
        self.retired = True
        self.selector.unregister(self.warm)
        self.warm.close()
        if self.due is not None:
            self.due = None
            self.selector.unregister(self.task_r)
        for sock in self.idle:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def ready_runner(tasks_dir: Path, task_r: int, sock: socket.socket, events_w: int,
                 learn_w: int, pages: prefault.Ranges, tell_pages: bool) -> int:
    """A runner forked ahead of its task: copies ahead the pages a task will write, takes the
    next task off the pipe and runs it; 0 when it ended idle (end of file from the keeper)."""
    set_name("rm-ready-run")
    os.setpgid(0, 0)
    if pages:
        prefault.populate(pages, lambda: bool(select.select([task_r, sock], [], [], 0)[0]))
    task_id = take_task(task_r, sock)
    os.close(task_r)
    if task_id is None:
        return 0
    try:  # first: the keeper must know, whatever happens next
        sock.sendall(f"took {task_id}\n".encode())
    except OSError:  # the keeper is gone: the task runs all the same, its state its own
        pass
    me = os.getpid()
    tell(events_w, f"took {me} {task_id}\n")
    paths = TaskPaths(tasks_dir / valid_task_id(task_id))
    write_json(paths.pids, {"supervisor": os.getppid(), "runner": me, "keeper": True})
    if paths.cancel.exists():  # a kill that came before the pids only left this file
        return 0
    reseed()

    def on_end(imported: list[str]) -> None:
        tell(events_w, f"ended {me} {task_id}\n")
        os.close(events_w)  # user code may have started processes: not theirs
        if tell_pages:
            try:
                sock.sendall(prefault.report("run"))
            except OSError:
                pass
        sock.close()
        # always a line, names or not: the warm process learns from it
        tell(learn_w, report(learnable(imported, installed_roots())).decode())

    runner.become_runner(paths, on_end)
    return 0


def take_task(task_r: int, sock: socket.socket) -> str | None:
    """The next task id off the pipe; None when the keeper retired this runner or is gone
    (end of file on its socket). A task already on the pipe comes first: the agent said it
    started."""
    with selectors.DefaultSelector() as selector:
        selector.register(task_r, selectors.EVENT_READ)
        selector.register(sock, selectors.EVENT_READ)
        while True:
            ready = {key.fileobj for key, _ in selector.select()}
            if task_r in ready:
                try:
                    record = os.read(task_r, RECORD)
                except BlockingIOError:  # another runner took it
                    record = None
                if record is not None:
                    return record.decode().strip() or None
            if sock in ready:
                return None


def reseed() -> None:
    """Random state imported in the warm process would be the same in every task: NumPy's
    global generator does not reseed itself in a forked child (Python's `random` does)."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        try:
            numpy_random.seed()
        except Exception:  # noqa: BLE001 - an odd NumPy: leave it as it is
            pass


def tell(fd: int, line: str) -> None:
    try:
        os.write(fd, line.encode())
    except OSError:  # the agent is gone; the kernel's next poll reads the task's files
        pass
