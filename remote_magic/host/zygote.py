"""The warm process, on the host (see warm.py for the design).

`Zygote` is the warm process: it imports what this host's tasks import (learned.py), never
runs a cell, and forks a *keeper* (keeper.py): the one supervisor of the runners forked from
this generation of its imports, which keeps one runner ready. When it has imported more, it
forks a new keeper and closes its socket to the old one, which then forks nothing more and
ends once its running tasks have.
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
from pathlib import Path

from .keeper import Keeper
from .learned import MAX_NAMES, Learned, installed_roots
from .proctitle import die_with_parent, set_name

MPLBACKEND = "module://remote_magic.host.mpl_backend"  # what the runner sets, set before imports


class Zygote:
    """The warm process: imports what tasks use and forks the keeper of its runners."""

    def __init__(self, workdir: Path, tasks_dir: Path, task_r: int, events_w: int,
                 life_r: int) -> None:
        self.tasks_dir, self.task_r, self.events_w, self.life_r = \
            tasks_dir, task_r, events_w, life_r
        self.learned = Learned(workdir)
        self.keeper: socket.socket | None = None  # our end of the current keeper's socket
        self.dropped = 0  # learned names dropped since this process started, still imported

    def run(self, agent: int) -> int:
        set_name("rm-warm")
        die_with_parent(agent)  # its keeper does not: running tasks go on without the agent
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # ended keepers reap themselves
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
        self.renew()  # a keeper at once, before the imports below
        if not self.preload(self.learned.names):
            return 0
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
                    if not self.learn(lines):  # may renew the keeper with new imports
                        return 0

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
        """Import modules ahead of need, then renew the keeper if anything was imported.
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
        if len(sys.modules) != loaded:
            self.renew()
        return True

    def renew(self) -> None:
        """Fork a keeper with every module imported so far; the one before it retires (end
        of file on its socket)."""
        # Everything imported so far lives as long as this process: out of the collector's
        # reach (gc.freeze), a collection in a task does not write to, and so copy, its pages.
        gc.freeze()
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ours.close()
                if self.keeper is not None:
                    self.keeper.close()
                for fd in (self.life_r, self.learn_r, self.selector.fileno()):
                    os.close(fd)
                code = Keeper(self.tasks_dir, self.task_r, self.events_w, self.learn_w,
                              theirs).run()
            finally:
                os._exit(code)
        theirs.close()
        if self.keeper is not None:
            self.keeper.close()
        self.keeper = ours


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
