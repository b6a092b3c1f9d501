"""A host session: the kernel's connection to one host, and the thread that follows its tasks.

Each poll is ONE request to the host's agent covering all watched tasks (state, progress and
new output). The agent also pushes an event when one of its tasks ends, which wakes the poll
at once, so a short task is not held back by the poll interval. Updates go to the store and
to whoever watches the task: a queue for a waiting cell, callbacks for futures.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config.hosts import HostConfig
from ..errors import RemoteMagicError, TransportError
from ..wire.states import FINAL_STATES, WAITING_STATES, State
from .agent_client import AgentClient
from .store import TaskStore
from .transport import SharedConnections, open_transport

FOLLOW_TICK = 0.5  # seconds: how often a waiting cell wakes to notice an interrupt
FAST_POLL = 0.1  # seconds between polls while a cell waits and streams output
VIEW_POLL = 0.5  # while a live view shows a task in the background
SLOW_POLL = 2.0  # at most this long between polls otherwise
MAX_BACKOFF = 30.0
QUEUED_POLL = 5.0  # batch jobs that all wait in the queue: polls slow down to this
PUSHED_MAX = 1000  # ends pushed (or starts served) for tasks not watched yet, kept at most


@dataclass
class PollDefaults:
    """The kernel's own `status_interval` and `scheduler_poll` (seconds), for the hosts whose
    entry sets none: `%config RemoteMagics.status_interval = 30` reaches every session at its
    next poll, without reconnecting."""

    status_interval: float | None = None
    scheduler_poll: float | None = None


@dataclass
class Update:
    """What changed for one task since the previous poll."""

    task_id: str
    state: str
    reason: str | None = None
    progress: dict[str, Any] | None = None
    stdout: str = ""
    stderr: str = ""
    changed: bool = False  # the state or progress moved
    problem: str | None = None  # the host could not be asked; the task itself may be fine
    job_id: str | None = None  # the scheduler's, once the task was submitted as a job
    # where stdout and stderr above start in the task's files, the displays made meanwhile
    # (stamped with the output offsets at which they happened), and whether more are waiting
    stdout_at: int = 0
    stderr_at: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    events_more: bool = False
    events_end: int | None = None  # where the next events start in the task's events file
    output_more: bool = False  # stdout or stderr had more than one reply carries
    started: float | None = None  # when it began running and ended, by the host's clock
    finished: float | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass
class Watch:
    task_id: str
    live_output: bool
    state: str = State.SUBMITTED
    progress: dict[str, Any] | None = None
    offsets: dict[str, int] = field(
        default_factory=lambda: {"stdout": 0, "stderr": 0, "events": 0})
    updates: queue.Queue[Update] | None = None
    on_final: list[Callable[[Update], None]] = field(default_factory=list)
    listeners: list[Callable[[Update], None]] = field(default_factory=list)  # every poll
    reason: str | None = None  # the last one stored: a waiting task's reason changes alone
    # Not asked about before this time (monotonic): the agent follows the task from its start
    # and tells its end, with all a poll would bring, so the first poll can wait.
    quiet_until: float = 0.0

    @property
    def wants_output(self) -> bool:
        return self.live_output or bool(self.listeners)


class HostSession:
    def __init__(self, host: HostConfig, store: TaskStore,
                 shared: SharedConnections | None = None,
                 defaults: PollDefaults | None = None) -> None:
        self.host = host
        self.store = store
        self.defaults = defaults or PollDefaults()
        self.transport = open_transport(host, self._on_event, shared)
        self._watches: dict[str, Watch] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._checked: AgentClient | None = None
        self.dispatcher: Callable[[HostSession], None] | None = None  # starts waiting tasks
        self.polls = 0  # status round trips so far (what a poll costs the host)
        self._pushed: dict[str, tuple[Any, dict[str, Any]]] = {}  # task -> (from, final status)
        # Tasks to ask about at the next poll even if the others are not due: new watches, and
        # tasks whose end was announced without their status.
        self._asked_now: set[str] = set()
        self._served: set[str] = set()  # started here, followed by the agent from their start
        self._info: dict[str, Any] = {}

    # ------------------------------------------------------------ requests

    def agent(self) -> AgentClient:
        """The host's agent; a new one is checked once for a matching Python version."""
        agent = self.transport.agent()
        if agent is not self._checked:
            self._info = agent.request("hello")
            ours = "{}.{}".format(*sys.version_info[:2])
            theirs = ".".join(self._info["python"].split(".")[:2])
            if theirs != ours:
                agent.close()
                raise RemoteMagicError(
                    f"Host '{self.host.name}' runs Python {self._info['python']} "
                    f"({self._info['executable']}) but this kernel runs Python {ours}: pickled "
                    "data does not cross Python versions reliably. Set 'python:' for this host "
                    f"to a Python {ours} interpreter.")
            self._checked = agent
        return agent

    def hello(self) -> dict[str, Any]:
        """What the agent said about itself when it started (Python, host name, workdir)."""
        self.agent()
        return self._info

    def request(self, op: str, **args: Any) -> Any:
        return self.call(op, **args)[0]

    def call(self, op: str, **args: Any) -> tuple[Any, bytes]:
        """A request whose answer comes with bytes (result files pushed with a status)."""
        return self.agent().call(op, args)

    def started(self, task_id: str, answer: dict[str, Any]) -> None:
        """A task this session just started: if the agent follows it from its start
        ("served"), its watch need not ask about it at once."""
        if answer.get("served"):
            with self._lock:
                if task_id in self._watches:  # it waited for a slot: already followed
                    return
                self._served.add(task_id)
                while len(self._served) > PUSHED_MAX:  # started, and never watched
                    self._served.pop()

    def _on_event(self, event: dict[str, Any]) -> None:
        if "files" in event:  # the result files, pushed because this host's are copied here
            self.transport.keep_results(event["task"], event["files"], event.get("payload", b""))
        if "task" in event:
            with self._lock:
                if "status" in event:
                    self._pushed[event["task"]] = (event.get("from"), event["status"])
                    for task_id in list(self._pushed)[:max(0, len(self._pushed) - PUSHED_MAX)]:
                        del self._pushed[task_id]  # the oldest of those never watched
                else:
                    self._asked_now.add(event["task"])
        self._wake.set()

    @property
    def status_interval(self) -> float | None:
        """The least time between background polls: the host's, else the kernel's."""
        own = self.host.status_interval
        return own if own is not None else self.defaults.status_interval

    @property
    def scheduler_poll(self) -> float | None:
        own = self.host.scheduler_poll
        return own if own is not None else self.defaults.scheduler_poll

    # ------------------------------------------------------------ watching

    def watch(self, task_id: str, live_output: bool = False, state: str = State.SUBMITTED,
              on_final: Callable[[Update], None] | None = None,
              listener: Callable[[Update], None] | None = None) -> Watch:
        """Follow a task; a foreground waiter reads `watch.updates`, a live view listens
        (called from the session's thread on every poll, so it can tick)."""
        with self._lock:
            watch = self._watches.get(task_id)
            if watch is None:
                watch = self._watches[task_id] = Watch(task_id, live_output, state)
            watch.live_output = watch.live_output or live_output
            if live_output and watch.updates is None:
                watch.updates = queue.Queue()
            if on_final is not None:
                watch.on_final.append(on_final)
            if listener is not None:
                watch.listeners.append(listener)
            if task_id in self._served:  # its end will come with its status: no poll now
                self._served.discard(task_id)
                watch.quiet_until = time.monotonic() + FAST_POLL
            else:
                self._asked_now.add(task_id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"remote-session-{self.host.name}")
                self._thread.start()
        self._wake.set()
        return watch

    def unwatch_output(self, task_id: str) -> None:
        """The cell stopped waiting (interrupt): keep following the task, quietly."""
        with self._lock:
            watch = self._watches.get(task_id)
            if watch is not None:
                watch.live_output = False
                watch.updates = None

    def watching(self, task_id: str) -> bool:
        with self._lock:
            return task_id in self._watches

    def poke(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        backoff = FAST_POLL
        due = 0.0  # when every watched task is asked about again
        while True:
            with self._lock:
                watches = dict(self._watches)
            if not watches:
                self._wake.wait(SLOW_POLL)
                self._wake.clear()
                continue
            # Woken before then (a task ended, a new watch): only those tasks are asked
            # about; with hundreds in flight, asking about all on every end costs the host
            # a read of each one's files per task that ends.
            everything = time.monotonic() >= due
            try:
                self.poll(watches, everything)
                if self.dispatcher is not None:
                    self.dispatcher(self)
            except TransportError as exc:
                for watch in watches.values():
                    self._deliver(watch, Update(watch.task_id, watch.state, problem=str(exc)))
                backoff = after_failure(backoff, self.transport.retry_delay())
                due = time.monotonic() + backoff
            else:
                if everything:
                    batch = self.host.scheduler != "process"
                    backoff = next_poll(backoff, watches.values(), batch=batch)
                    due = time.monotonic() + max(backoff, self.status_interval or 0.0)
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()

    def poll(self, watches: dict[str, Watch], everything: bool = True) -> None:
        """One round trip for the watched tasks (all of them, or those asked about now); none
        for a task whose end the agent pushed with its final status, read from where this
        watch had read to."""
        with self._lock:  # what concerns these tasks; an end pushed before its task was
            # watched (it ended as it started) waits here for the watch
            pushed = {t: self._pushed.pop(t) for t in watches if t in self._pushed}
            now = {t for t in self._asked_now if t in watches or t not in self._watches}
            self._asked_now -= now
        clock = time.monotonic()
        query = {w.task_id: (dict(w.offsets) if w.wants_output else None)
                 for w in watches.values()
                 if (everything and w.quiet_until <= clock) or w.task_id in now}
        statuses = {}
        for task_id, (start, status) in pushed.items():
            watch = watches[task_id]
            if (start == dict(watch.offsets)) if watch.wants_output else True:
                statuses[task_id] = status
                query.pop(task_id, None)
            else:  # read from elsewhere: ask about it now
                query[task_id] = dict(watch.offsets) if watch.wants_output else None
        if query:  # a host whose results are copied here gets them pushed with the end
            poll = {"scheduler_poll": self.scheduler_poll} \
                if self.scheduler_poll is not None else {}
            answers, payload = self.call("status", tasks=query, push=not self.host.is_local,
                                         **poll)
            self.polls += 1
            for task_id, status in answers.items():
                if "files" in status:  # ended, with its small result files (see _on_event)
                    start = status["payload_from"]
                    size = sum(entry["size"] for entry in status["files"])
                    self.transport.keep_results(task_id, status["files"],
                                                payload[start:start + size])
            statuses.update(answers)
        for task_id, status in statuses.items():
            watch = watches[task_id]
            update = self._apply(watch, status)
            if update.final:
                with self._lock:
                    if self._watches.get(task_id) is watch:
                        del self._watches[task_id]
            self._deliver(watch, update)

    def _apply(self, watch: Watch, status: dict[str, Any]) -> Update:
        update = Update(watch.task_id, status["state"], status.get("reason"),
                        status.get("progress"), status.get("stdout", ""),
                        status.get("stderr", ""), job_id=status.get("job_id"),
                        stdout_at=watch.offsets["stdout"], stderr_at=watch.offsets["stderr"],
                        events=status.get("events", []),
                        events_more=status.get("events_more", False),
                        events_end=status.get("events_end"),
                        output_more=status.get("output_more", False))
        for stream in ("stdout", "stderr", "events"):
            if f"{stream}_end" in status:
                watch.offsets[stream] = status[f"{stream}_end"]
        history = status.get("history", {})
        update.started = history.get(State.RUNNING)
        update.finished = max((history[s] for s in FINAL_STATES if s in history), default=None)
        update.changed = update.state != watch.state or update.progress != watch.progress
        if update.changed or update.reason != watch.reason:
            watch.reason = update.reason
            watch.state, watch.progress = update.state, update.progress
            times = {"submitted": history.get(State.SUBMITTED),
                     "started": update.started, "finished": update.finished}
            known = {**times, "job_id": update.job_id}
            self.store.update(watch.task_id, state=update.state, reason=update.reason,
                              progress=update.progress,
                              **{k: v for k, v in known.items() if v is not None})
        return update

    def _deliver(self, watch: Watch, update: Update) -> None:
        if watch.updates is not None and (update.changed or update.stdout or update.stderr
                                          or update.events or update.problem or update.final):
            watch.updates.put(update)
        for listener in list(watch.listeners):
            try:
                listener(update)
            except Exception:  # noqa: BLE001 - a broken view must not stop the session
                watch.listeners.remove(listener)
        if update.final:
            for callback in watch.on_final:
                callback(update)

    def close(self) -> None:
        self.transport.close()


def after_failure(previous: float, due: float) -> float:
    """Seconds to the next poll after one that could not reach the host. When the transport
    is backing off its reconnects (`due` > 0), poll just when its next attempt is due: one
    schedule, not the product of two back-offs; otherwise double, up to MAX_BACKOFF."""
    return due + 0.01 if due > 0 else min(MAX_BACKOFF, previous * 2)


def next_poll(previous: float, watches: Iterable[Watch], batch: bool) -> float:
    """Seconds to the next poll after one that worked, from who is watching what."""
    watches = list(watches)
    if batch and all(w.state in WAITING_STATES for w in watches):
        # Queue waits last minutes, and every poll makes the agent read each task's files on
        # the login node: slow down step by step, so that a job which starts at once (a
        # quiet cluster) is still seen at once.
        return min(QUEUED_POLL, previous * 1.5)
    if any(w.live_output for w in watches):
        return FAST_POLL
    if any(w.listeners for w in watches):
        return VIEW_POLL
    return min(SLOW_POLL, previous * 1.5)
