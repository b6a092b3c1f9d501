"""The warm process and its ready pairs, on the host (see warm.py for the design).

`Zygote` is the warm process: it imports what this host's tasks import (learned.py), never
runs a cell, and keeps a *ready pair* forked: a supervisor (`rm-ready`) and its runner
(`rm-ready-run`), both waiting. The runner takes the next task id off the task pipe, writes
`pids.json` and runs the task at once; its supervisor hears which task it took (a pipe between
the two), tells the warm process, and supervises it as a cold supervisor does (runner.watch).

The next pair is not forked at once: a fork of this process costs milliseconds of CPU, and on
a small host it would compete with the task that just started. It is forked when a task ends
(its runner reports to the warm process), when a task waits on the task pipe with no pair to
take it (so a burst of tasks is never held back), or after DEFER seconds, whichever is first.

A pair forked from this process shares its memory until it writes to it, and each page it
writes is then copied on a fault: hundreds of pages for any task. While a pair waits, it copies
ahead the pages that an earlier pair's runner and supervisor reported writing (prefault.py).
"""

from __future__ import annotations

import gc
import importlib
import os
import select
import selectors
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from ..wire.taskdir import TaskPaths, valid_task_id, write_json
from . import prefault, runner
from .learned import MAX_NAMES, Learned, installed_roots, learnable, report
from .proctitle import die_with_parent, set_name

RECORD = 128  # bytes per task record on the task pipe (task ids have at most 64 characters)
MPLBACKEND = "module://remote_magic.host.mpl_backend"  # what the runner sets, set before imports
DEFER = 1.0  # seconds at most between a pair taking a task and the next pair's fork
REPORT_EVERY = 25  # pairs between two reports of the pages a task wrote (prefault.py)


class Zygote:
    """The warm process: imports what tasks use, keeps a ready pair, forks the next."""

    def __init__(self, workdir: Path, tasks_dir: Path, task_r: int, events_w: int,
                 life_r: int) -> None:
        self.tasks_dir, self.task_r, self.events_w, self.life_r = \
            tasks_dir, task_r, events_w, life_r
        self.learned = Learned(workdir)
        self.pairs: dict[socket.socket, int] = {}  # our end of a ready pair's socket -> pid
        self.dropped = 0  # learned names dropped since this process started, still imported
        self.due: float | None = None  # when the next pair is forked, unless needed sooner
        self.pages: dict[str, prefault.Ranges] = {}  # "run"/"sup" -> pages to copy ahead
        self.forks = 0
        self.report_due = True  # no report yet since this process's imports changed

    def run(self, agent: int) -> int:
        set_name("rm-warm")
        die_with_parent(agent)  # its ready pairs follow: their socket to it closes
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
        partial = b""
        while True:
            timeout = None if self.due is None else max(0.0, self.due - time.monotonic())
            for key, _ in self.selector.select(timeout):
                if key.fileobj == self.life_r:
                    if not os.read(self.life_r, 1):
                        return 0
                elif key.fileobj == self.learn_r:
                    try:
                        data = partial + os.read(self.learn_r, 1 << 16)
                    except BlockingIOError:
                        continue
                    *lines, partial = data.split(b"\n")
                    lines = [line for line in lines if not self.take_pages(line)]
                    if not lines:
                        continue
                    if not self.learn(lines):  # may renew the pair with new imports
                        return 0
                    self.fork_due()  # a task ended: the CPU it used is free
                elif key.fileobj == self.task_r:
                    self.fork_due()  # a task waits, and no pair is there to take it
                else:
                    self.service(key.fileobj, defer=True)  # type: ignore[arg-type]
            if self.due is not None and time.monotonic() >= self.due:
                self.fork_due()

    def take_pages(self, line: bytes) -> bool:
        """Keep a `pages KIND ...` report for the next pairs; False for any other line."""
        if not line.startswith(b"pages "):
            return False
        kind, *words = line.decode(errors="replace").split()[1:]
        if kind in ("run", "sup"):
            self.pages[kind] = prefault.decode(words)
            self.report_due = self.report_due and kind != "run"
        return True

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
        return self.preload(new)

    def preload(self, names: list[str]) -> bool:
        """Import modules ahead of need, then renew the ready pair if anything was imported.
        An import that starts a thread makes this process unsafe to fork: the module is
        marked, and False says this process must end, to be replaced."""
        loaded = len(sys.modules)
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
        if len(sys.modules) != loaded:
            self.report_due = True
            self.renew()
        return True

    def poll_pairs(self) -> None:
        """Between two long imports: replace a ready pair that took a task meanwhile."""
        for key, _ in self.selector.select(0):
            if key.fileobj == self.task_r:
                self.fork_due()
            elif key.fileobj not in (self.life_r, self.learn_r):
                self.service(key.fileobj)  # type: ignore[arg-type]

    def service(self, sock: socket.socket, defer: bool = False) -> None:
        """A ready pair spoke: it took a task (or died): fork the next one, now or when due
        (then the task pipe is watched meanwhile: a task waiting there brings it forward)."""
        try:
            sock.recv(16)
        except OSError:
            pass
        self.selector.unregister(sock)
        self.pairs.pop(sock, None)
        sock.close()
        if not defer:
            self.fork_pair()
        elif self.due is None and not self.pairs:
            self.due = time.monotonic() + DEFER
            self.selector.register(self.task_r, selectors.EVENT_READ)

    def fork_due(self) -> None:
        if self.due is not None:
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
        if self.due is not None:  # forked now: the task pipe is the new pair's to watch
            self.due = None
            self.selector.unregister(self.task_r)
        # Everything imported so far lives as long as this process: out of the collector's
        # reach (gc.freeze), a collection in a task does not write to, and so copy, its pages.
        gc.freeze()
        self.forks += 1
        tell_pages = self.report_due or self.forks % REPORT_EVERY == 0
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
                                        self.learn_w, self.pages, tell_pages)
            finally:
                os._exit(code)
        theirs.close()
        self.pairs[ours] = pid
        self.selector.register(ours, selectors.EVENT_READ)


def ready_supervisor(tasks_dir: Path, task_r: int, zygote: socket.socket, events_w: int,
                     learn_w: int, pages: dict[str, prefault.Ranges], tell_pages: bool) -> int:
    """A supervisor forked ahead of its task, with its runner forked and waiting under it.

    The runner takes the task off the pipe itself and starts it at once; this process hears
    which task that was and supervises it as a cold supervisor does, so no hand-over between
    two processes lies on the task's path. While they wait, each copies ahead the pages its
    task will write (`pages`); with `tell_pages`, each tells the warm process afterwards which
    pages that were."""
    set_name("rm-ready")
    os.setsid()  # as a cold supervisor: the task outlives the agent
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    took_r, took_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _ready_runner(tasks_dir, took_r, took_w, task_r, zygote, events_w, learn_w,
                      pages.get("run"), tell_pages)
    os.close(took_w)
    os.close(task_r)
    if not tell_pages:
        os.close(learn_w)
    runner.stop_on_term(pid)  # a kill can find this process once the runner wrote pids.json
    sup = pages.get("sup")
    if sup:
        prefault.populate(sup, lambda: bool(select.select([took_r], [], [], 0)[0]))
    task_id = _read_all(took_r).decode()
    if not task_id:  # the runner ended idle: retired, or the agent is gone
        os.waitpid(pid, 0)
        return 0
    paths = TaskPaths(tasks_dir / valid_task_id(task_id))
    set_name(f"rm-watch-{task_id[:6]}")
    log = os.open(paths.stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    try:  # the task runs: the warm process forks the next pair when it is due
        zygote.send(b"t")
    except OSError:
        pass
    zygote.close()
    code = runner.watch(paths, pid, warm=True)
    _tell(events_w, f"done {os.getpid()} {task_id}\n")
    if tell_pages:
        _tell(learn_w, prefault.report("sup").decode())
    return code


def _ready_runner(tasks_dir: Path, took_r: int, took_w: int, task_r: int,
                  zygote: socket.socket, events_w: int, learn_w: int,
                  pages: prefault.Ranges | None, tell_pages: bool) -> None:
    """The runner of a ready pair: takes the next task off the pipe and runs it."""
    code = 0
    try:
        set_name("rm-ready-run")
        os.setpgid(0, 0)
        os.close(took_r)
        if pages:
            prefault.populate(pages, lambda: bool(select.select([task_r, zygote], [], [], 0)[0]))
        task_id = _take_task(task_r, zygote)
        os.close(task_r)
        zygote.close()
        if task_id is None:  # retired, or the agent is gone: the supervisor ends with us
            return
        os.write(took_w, task_id.encode())  # first: the supervisor must know, whatever happens
        os.close(took_w)
        supervisor = os.getppid()
        _tell(events_w, f"took {supervisor} {task_id}\n")
        paths = TaskPaths(tasks_dir / valid_task_id(task_id))
        write_json(paths.pids, {"supervisor": supervisor, "runner": os.getpid()})
        if paths.cancel.exists():  # a kill that came before the pids only left this file
            return
        _reseed()

        def on_end(imported: list[str]) -> None:
            _tell(events_w, f"ended {supervisor} {task_id}\n")
            os.close(events_w)  # user code may have started processes: not theirs
            if tell_pages:  # before the line that has the next pair forked
                _tell(learn_w, prefault.report("run").decode())
            # always a line, names or not: the warm process forks the next pair on it
            _tell(learn_w, report(learnable(imported, installed_roots())).decode())

        runner.become_runner(paths, on_end)
    finally:
        os._exit(code)


def _take_task(task_r: int, zygote: socket.socket) -> str | None:
    """The next task id off the pipe; None when this pair is retired or the agent is gone
    (end of file on the socket to the warm process). A task already on the pipe comes first:
    the agent said it started."""
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


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


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
