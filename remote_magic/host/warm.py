"""Warm runners: a task starts in a process that is already there, its imports already done.

Starting a task cold costs two forks (agent -> supervisor -> runner) and every import the cell
makes; with scikit-learn loaded, one fork alone costs several milliseconds. So the agent keeps
a *warm process* (`rm-warm`), forked from itself, that imports the modules this host's tasks
imported before (learned.py) and never runs user code. The warm process keeps a *ready pair*
forked: a supervisor (`rm-ready`) and, under it, a runner (`rm-ready-run`) waiting for a task.

Starting a task is then one write: the agent puts the task's id on the task pipe, the ready
supervisor reads it, tells the warm process to fork the next pair, hands the task to its
runner and supervises it exactly as a cold supervisor does. Each task still has a process of
its own, forked from one that never ran a cell.

The pipes, and why each exists:
- task pipe (agent -> ready supervisors): fixed-size records, each written in one atomic
  write, so several readers never split one; unread records are a queue, and the agent drains
  them and starts those tasks cold when no ready pair took them within WAIT seconds (a warm
  process still importing, or stuck).
- events pipe (supervisors and runners -> agent): "took PID TASK" when a supervisor took a
  task, "ended PID TASK" from the runner once the outcome is recorded (the agent tells the
  kernel at once, while the runner exits), "done PID TASK" from the supervisor at the very end
  (which tells the kernel only when the runner died before saying "ended").
- life pipe (agent -> warm process): never written; its end of file says the agent is gone,
  and the warm process and its ready pairs exit (running tasks go on, as cold ones do).
- learn pipe (runners -> warm process): the modules a task imported, one line per task.
"""

from __future__ import annotations

import gc
import importlib
import os
import selectors
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from ..wire.taskdir import TaskPaths, valid_task_id
from . import runner
from .learned import MAX_NAMES, Learned, installed_roots, learnable, report
from .proctitle import set_name

RECORD = 128  # bytes per task record on the task pipe (task ids have at most 64 characters)
WAIT = 0.5  # seconds a task may wait on the task pipe before the agent starts it cold
RESTARTS = 5  # warm processes that may end within RESTART_WINDOW before the agent gives up
RESTART_WINDOW = 60.0
MPLBACKEND = "module://remote_magic.host.mpl_backend"  # what the runner sets, set before imports


class WarmPool:
    """The agent's side: the pipes, the warm process, and the tasks handed to it."""

    def __init__(self, workdir: Path, tasks_dir: Path) -> None:
        self.workdir, self.tasks_dir = workdir, tasks_dir
        self.task_r, self.task_w = os.pipe()
        self.events_r, self.events_w = os.pipe()
        for fd in (self.task_r, self.task_w, self.events_r):
            os.set_blocking(fd, False)
        self.pid: int | None = None
        self._life_w: int | None = None
        self._ended: list[float] = []
        self.offered: dict[str, float] = {}  # task -> when, until a supervisor takes it
        self.took: dict[int, str] = {}  # supervisor pid -> task, until it is done
        self._told: set[str] = set()  # tasks whose end the kernel heard before "done"
        self._partial = b""

    def start(self) -> bool:
        """Fork the warm process, unless too many ended lately (then tasks start cold)."""
        now = time.monotonic()
        self._ended = [t for t in self._ended if now - t < RESTART_WINDOW]
        if len(self._ended) >= RESTARTS:
            return False
        life_r, life_w = os.pipe()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(life_w)
                code = Zygote(self.workdir, self.tasks_dir, self.task_r, self.events_w,
                              life_r).run()
            finally:
                os._exit(code)
        os.close(life_r)
        if self._life_w is not None:
            os.close(self._life_w)
        self.pid, self._life_w = pid, life_w
        return True

    def ended(self, pid: int) -> bool:
        """The agent reaped `pid`: whether it was the warm process."""
        if pid != self.pid:
            return False
        self.pid = None
        self._ended.append(time.monotonic())
        return True

    def offer(self, task_id: str) -> bool:
        """Put a task on the task pipe; False when it must start cold."""
        if self.pid is None and not self.start():
            return False
        try:
            os.write(self.task_w, task_id.encode().ljust(RECORD))
        except BlockingIOError:  # a full queue: nobody has been taking tasks
            return False
        self.offered[task_id] = time.monotonic()
        return True

    def events(self) -> list[str]:
        """Read what the supervisors said; returns the tasks that ended."""
        try:
            data = os.read(self.events_r, 1 << 16)
        except BlockingIOError:
            return []
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-RECORD * 4:]  # our lines are short; junk is cut
        ended = []
        for line in lines:
            try:  # a runner holds this pipe while the cell runs: take nothing for granted
                kind, number, task = line.decode().split(" ", 2)
                pid = int(number)
            except ValueError:
                continue
            if kind == "took":
                self.offered.pop(task, None)
                self.took[pid] = task
            elif kind == "ended":
                self._told.add(task)
                ended.append(task)
            elif kind == "done":
                self.took.pop(pid, None)
                if task not in self._told:
                    ended.append(task)
                self._told.discard(task)
        return ended

    def overdue(self) -> list[str]:
        """Tasks that waited too long for a ready pair, taken back off the task pipe."""
        now = time.monotonic()
        if not any(now - when > WAIT for when in self.offered.values()):
            return []
        back = []
        while True:
            try:
                record = os.read(self.task_r, RECORD)
            except BlockingIOError:
                break
            back.append(record.decode().strip())
        # what was not on the pipe any more was taken, and its supervisor will say so
        self.offered = {t: w for t, w in self.offered.items() if now - w <= WAIT}
        for task in back:
            self.offered.pop(task, None)
        return back

    def timeout(self) -> float | None:
        """How long the agent may wait for a request before checking on offered tasks."""
        return WAIT / 2 if self.offered else None

    def supervisor_of(self, task_id: str) -> int | None:
        return next((pid for pid, task in self.took.items() if task == task_id), None)


class Zygote:
    """The warm process: imports what tasks use, keeps a ready pair, forks the next."""

    def __init__(self, workdir: Path, tasks_dir: Path, task_r: int, events_w: int,
                 life_r: int) -> None:
        self.tasks_dir, self.task_r, self.events_w, self.life_r = \
            tasks_dir, task_r, events_w, life_r
        self.learned = Learned(workdir)
        self.pairs: dict[socket.socket, int] = {}  # our end of a ready pair's socket -> pid
        self.dropped = 0  # learned names dropped since this process started, still imported

    def run(self) -> int:
        set_name("rm-warm")
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # ended supervisors reap themselves
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        self.learn_r, self.learn_w = os.pipe()
        _close_except({0, 1, 2, self.task_r, self.events_w, self.life_r, self.learn_r,
                       self.learn_w})
        os.set_blocking(self.learn_r, False)
        self.selector = selectors.DefaultSelector()  # made after the agent's fds are closed
        os.environ["MPLBACKEND"] = MPLBACKEND
        installed_roots()  # computed once here, inherited by every runner
        self.selector.register(self.life_r, selectors.EVENT_READ)
        self.selector.register(self.learn_r, selectors.EVENT_READ)
        self.fork_pair()  # ready at once, before the imports below
        if not self.preload(self.learned.names):
            return 0
        self.renew()
        partial = b""
        while True:
            for key, _ in self.selector.select():
                if key.fileobj == self.life_r:
                    if not os.read(self.life_r, 1):
                        return 0
                elif key.fileobj == self.learn_r:
                    try:
                        data = partial + os.read(self.learn_r, 1 << 16)
                    except BlockingIOError:
                        continue
                    *lines, partial = data.split(b"\n")
                    if not self.learn(lines):
                        return 0
                else:
                    self.service(key.fileobj)  # type: ignore[arg-type]

    def learn(self, lines: list[bytes]) -> bool:
        """Take in the runners' reports; False when this process should end and be
        replaced: an import was unsafe, or it holds too many modules no longer learned
        (they cannot be unloaded)."""
        new: list[str] = []
        for line in lines:
            names = line.decode(errors="replace").split()[1:]
            added, dropped = self.learned.add(names)
            self.dropped += dropped
            new += added
        if self.dropped > MAX_NAMES // 4:
            return False
        if new:
            if not self.preload(new):
                return False
            self.renew()
        return True

    def preload(self, names: list[str]) -> bool:
        """Import modules ahead of need; an import that starts a thread makes this process
        unsafe to fork: the module is marked, and the process ends to be replaced."""
        for name in names:
            if name in sys.modules:
                continue
            try:
                importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - not importable here: tasks import it
                self.learned.mark_unsafe(name)
                continue
            if threading.active_count() > 1:
                self.learned.mark_unsafe(name)
                return False
            self.poll_pairs()
        return True

    def poll_pairs(self) -> None:
        """Between two long imports: replace a ready pair that took a task meanwhile."""
        for key, _ in self.selector.select(0):
            if key.fileobj not in (self.life_r, self.learn_r):
                self.service(key.fileobj)  # type: ignore[arg-type]

    def service(self, sock: socket.socket) -> None:
        """A ready pair spoke: it took a task (or died): fork the next one."""
        try:
            sock.recv(16)
        except OSError:
            pass
        self.selector.unregister(sock)
        self.pairs.pop(sock, None)
        sock.close()
        self.fork_pair()

    def renew(self) -> None:
        """Replace the ready pairs by one forked now, with every module imported so far."""
        old = list(self.pairs)
        self.fork_pair()
        for sock in old:  # end of file: an idle ready pair exits
            self.selector.unregister(sock)
            del self.pairs[sock]
            sock.close()

    def fork_pair(self) -> None:
        # Everything imported so far lives as long as this process: out of the collector's
        # reach (gc.freeze), a collection in a task does not write to, and so copy, its pages.
        gc.freeze()
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ours.close()
                for sock in self.pairs:
                    sock.close()
                for fd in (self.life_r, self.learn_r):
                    os.close(fd)
                code = ready_supervisor(self.tasks_dir, self.task_r, theirs, self.events_w,
                                        self.learn_w)
            finally:
                os._exit(code)
        theirs.close()
        self.pairs[ours] = pid
        self.selector.register(ours, selectors.EVENT_READ)


def ready_supervisor(tasks_dir: Path, task_r: int, zygote: socket.socket, events_w: int,
                     learn_w: int) -> int:
    """A supervisor forked ahead of its task, with its runner forked and waiting under it."""
    set_name("rm-ready")
    os.setsid()  # as a cold supervisor: the task outlives the agent
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _ready_runner(go_r, go_w, task_r, zygote, events_w, learn_w)
    os.close(go_r)
    os.close(learn_w)
    task_id = _wait_for_task(task_r, zygote)
    if task_id is None:  # retired, or the agent is gone: the idle runner ends with us
        os.close(go_w)
        os.waitpid(pid, 0)
        return 0
    os.close(task_r)
    paths = TaskPaths(tasks_dir / valid_task_id(task_id))
    set_name(f"rm-watch-{task_id[:6]}")
    log = os.open(paths.stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    _tell(events_w, f"took {os.getpid()} {task_id}\n")

    def release() -> None:
        # A kill that came before the pids were written only left the cancel file.
        if not paths.cancel.exists():
            os.write(go_w, str(paths.root).encode())
        os.close(go_w)
        try:  # now that the task runs: the warm process forks the next pair meanwhile
            zygote.send(b"t")
        except OSError:
            pass
        zygote.close()

    code = runner.watch(paths, pid, release)
    _tell(events_w, f"done {os.getpid()} {task_id}\n")
    return code


def _ready_runner(go_r: int, go_w: int, task_r: int, zygote: socket.socket, events_w: int,
                  learn_w: int) -> None:
    """The runner of a ready pair: waits for its task's folder, then runs it."""
    code = 0
    try:
        set_name("rm-ready-run")
        os.setpgid(0, 0)
        zygote.close()
        for fd in (go_w, task_r):
            os.close(fd)
        chunks = []
        while chunk := os.read(go_r, 4096):
            chunks.append(chunk)
        os.close(go_r)
        if chunks:
            _reseed()
            paths = TaskPaths(b"".join(chunks).decode())

            def on_end(imported: list[str]) -> None:
                _tell(events_w, f"ended {os.getppid()} {paths.root.name}\n")
                os.close(events_w)  # user code may have started processes: not theirs
                found = learnable(imported, installed_roots())
                if found:
                    _tell(learn_w, report(found).decode())

            runner.become_runner(paths, on_end)
    finally:
        os._exit(code)


def _wait_for_task(task_r: int, zygote: socket.socket) -> str | None:
    """The next task id off the pipe; None when this pair is retired or the agent is gone.
    A task already on the pipe comes first: the agent said it started."""
    with selectors.DefaultSelector() as selector:
        selector.register(task_r, selectors.EVENT_READ)
        selector.register(zygote, selectors.EVENT_READ)
        while True:
            ready = {key.fileobj for key, _ in selector.select()}
            if task_r in ready:
                try:
                    record = os.read(task_r, RECORD)
                except BlockingIOError:  # another ready pair took it
                    record = None
                if record is not None:
                    return record.decode().strip() or None
            if zygote in ready:
                return None


def _reseed() -> None:
    """Random state imported in the warm process would be the same in every task: NumPy's
    global generator does not reseed itself in a forked child (Python's `random` does)."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        try:
            numpy_random.seed()
        except Exception:  # noqa: BLE001 - an odd NumPy: leave it as it is
            pass


def _tell(fd: int, line: str) -> None:
    try:
        os.write(fd, line.encode())
    except OSError:  # the agent is gone; the kernel's next poll reads the task's files
        pass


def _close_except(keep: set[int]) -> None:
    start = 0
    for fd in sorted(keep):
        if start < fd:  # closerange(n, n) may close everything (close_range(n, n - 1))
            os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, max_fd())


def max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        return 4096
