"""Warm runners: a task starts in a process that is already there, its imports already done.

Starting a task cold costs two forks (agent -> supervisor -> runner) and every import the cell
makes; with scikit-learn loaded, one fork alone costs several milliseconds. So the agent keeps
a *warm process* (`rm-warm`), forked from itself, that imports the modules this host's tasks
imported before (learned.py) and never runs user code. The warm process forks a *keeper*
(`rm-keeper`, keeper.py): one supervisor for all the runners forked from it, which keeps a
runner (`rm-ready-run`) forked and waiting for a task.

Starting a task is then one write: the agent puts the task's id on the task pipe, the ready
runner reads it, tells its keeper and runs the task; the keeper forks the next runner once
that task ends (or sooner when needed) and supervises the task exactly as a cold supervisor
does. Each task still has a process of its own, forked from one that never ran a cell. This
module is the agent's side (`WarmPool`); the warm process is in zygote.py.

The pipes, and why each exists:
- task pipe (agent -> ready runners): fixed-size records, each written in one atomic
  write, so several readers never split one; unread records are a queue, and the agent drains
  them and starts those tasks cold when no runner took them within WAIT seconds (a keeper
  stuck, or gone).
- events pipe (runners and keepers -> agent): "took PID TASK" when a runner took a task (PID
  is the runner's, in all three lines), "ended PID TASK" from the runner once the outcome is
  recorded (the agent tells the kernel at once, while the runner exits), "done PID TASK" from
  the keeper at the very end (which tells the kernel only when the runner died before saying
  "ended").
- life pipe (agent -> warm process): never written; its end of file says the agent is gone,
  and the warm process exits; its keeper then sees its running tasks to the end and exits.
- learn pipe (runners -> warm process): the modules a task imported, one line per task.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .keeper import RECORD
from .zygote import Zygote

WAIT = 0.5  # seconds a task may wait on the task pipe before the agent starts it cold
RESTARTS = 5  # warm processes that may end within RESTART_WINDOW before the agent gives up
RESTART_WINDOW = 60.0


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
        self.offered: dict[str, float] = {}  # task -> when, until a runner takes it
        self.took: dict[int, str] = {}  # runner pid -> task, until its keeper is done with it
        self._told: set[str] = set()  # tasks whose end the kernel heard before "done"
        self._partial = b""
        self._last_took = 0.0  # when a runner last took a task: a queue that moves is not stuck

    def start(self) -> bool:
        """Fork the warm process, unless too many ended lately (then tasks start cold)."""
        now = time.monotonic()
        self._ended = [t for t in self._ended if now - t < RESTART_WINDOW]
        if len(self._ended) >= RESTARTS:
            return False
        life_r, life_w = os.pipe()
        sys.stdout.flush()
        agent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(life_w)
                code = Zygote(self.workdir, self.tasks_dir, self.task_r, self.events_w,
                              life_r).run(agent)
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
        """Read what the runners and keepers said; returns the tasks that ended."""
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
                self._last_took = time.monotonic()
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
        """Tasks taken back off the task pipe because the runners stopped taking them: one
        waited over WAIT seconds and no runner took any task meanwhile. A burst only queues
        them (starting them cold then would cost two more forks each on a busy host)."""
        now = time.monotonic()
        if now - self._last_took <= WAIT or \
                not any(now - when > WAIT for when in self.offered.values()):
            return []
        back = []
        while True:
            try:
                record = os.read(self.task_r, RECORD)
            except BlockingIOError:
                break
            back.append(record.decode().strip())
        # what was not on the pipe any more was taken, and its runner will say so
        self.offered = {t: w for t, w in self.offered.items() if now - w <= WAIT}
        for task in back:
            self.offered.pop(task, None)
        return back

    def timeout(self) -> float | None:
        """How long the agent may wait for a request before checking on offered tasks."""
        return WAIT / 2 if self.offered else None

    def runner_of(self, task_id: str) -> int | None:
        return next((pid for pid, task in self.took.items() if task == task_id), None)
