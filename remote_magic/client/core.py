"""`Client`: submit, follow, retrieve and manage tasks on any configured host.

The magics, the executor and the command line are thin layers over `Client`, and reach a host
only through it (it holds one host session per host); nothing here imports IPython.
"""

from __future__ import annotations

import queue
import re
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config.hosts import HOST_NAME_RE, Config, HostConfig, job_resources, load_config
from ..errors import OptionError, RemoteMagicError, TaskNotFoundError, clipped
from ..wire.states import State
from ..wire.taskdir import TaskPaths
from . import allocations
from .files import limit_bytes, plan_return
from .prepare import PreparedTask, commit
from .results import TaskResult, load_result
from .session import FOLLOW_TICK, HostSession, PollDefaults, Update, Watch
from .store import TaskRecord, TaskStore
from .sweeping import SweepMethods
from .transport import SharedConnections

SLOT_REFRESH = 5.0  # seconds: how often unwatched tasks holding a host's slots are asked about


@dataclass
class Submission:
    record: TaskRecord
    reused: bool = False  # an identical task had completed: its results are reused
    attached: bool = False  # an identical task is still running: we wait for that one


class Client(SweepMethods):
    def __init__(self, store: TaskStore | None = None, config_path: str | None = None) -> None:
        self._store = store
        self._config_path = config_path
        self._sessions: dict[str, HostSession] = {}
        self._launching = threading.RLock()  # submit and dispatch must not race for slots
        self._refresh_at: dict[str, float] = {}  # per host: when its slots may be re-checked
        self._starting: set[str] = set()  # accepted, not yet started: identical ones attach
        self._connections = SharedConnections()  # a host and its allocations: one login
        # the kernel's poll intervals, for hosts that set none (RemoteMagics' traits)
        self.poll_defaults = PollDefaults()

    # ------------------------------------------------------------ configuration

    @property
    def store(self) -> TaskStore:
        if self._store is None:
            self._store = TaskStore()
        return self._store

    def config(self) -> Config:
        return load_config(self._config_path)

    def host(self, name: str | None = None) -> HostConfig:
        """A host of the hosts file, or the one an allocation's name stands for."""
        config = self.config()
        if name is not None and name not in config.hosts:
            found = allocations.host_config(config, name)
            if found is not None:
                return found
        return config.host(name)

    def _known(self) -> set[str]:
        """Names a task's host may have that can still be reached: hosts and allocations."""
        config = self.config()
        return {*config.hosts, *(n for n, e in allocations.known().items()
                                 if e.get("host") in config.hosts)}

    def session(self, host: str | HostConfig) -> HostSession:
        """The host's session, kept for the kernel's life; renewed if its config changed.

        The magics, the executor and the CLI reach a host through the methods below
        (`watch`, `checks`, `hello`, `setup`), never through a session's transport."""
        config = host if isinstance(host, HostConfig) else self.host(host)
        current = self._sessions.get(config.name)
        if current is not None and current.host != config:
            current.close()
            current = None
        if current is None:
            current = self._sessions[config.name] = HostSession(
                config, self.store, self._connections, self.poll_defaults)
            if config.max_running:
                current.dispatcher = self._dispatch
        return current

    def reach(self, host: str | HostConfig) -> None:
        """Connect to the host and check its Python, once per connection (a no-op after).
        Called in the user's thread, so that a login prompt or a refused host key is theirs
        to see there, before work is handed to another thread."""
        self.session(host).agent()

    def checks(self, host: str | HostConfig) -> Iterator[tuple[str, bool | None, str]]:
        """The transport's steps to reach the host, each (step, ok, detail), as they run."""
        return self.session(host).transport.checks()

    def hello(self, host: str | HostConfig) -> dict[str, Any]:
        """What the host's agent says about itself (Python, host name, work directory)."""
        return self.session(host).hello()

    def notes(self, host: str | HostConfig) -> list[str]:
        """What reaching the host taught us that a user may want to know (e.g. a fallback)."""
        return list(self.session(host).transport.notes)

    def setup(self, host: str | HostConfig) -> str:
        """Prepare the host once (e.g. ship the runtime); says what was done."""
        return self.session(host).transport.setup()

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()

    # ------------------------------------------------------------ the life of a task

    def submit(self, prepared: PreparedTask) -> Submission:
        """Stage and start a prepared task, unless an identical one can stand in for it."""
        submission = self.accept(prepared)
        if submission.reused or submission.attached:
            return submission
        return Submission(self.start(submission.record, prepared))

    def accept(self, prepared: PreparedTask) -> Submission:
        """Record a prepared task in the store, unless an identical one can stand in for it
        (its results reused, or the running one attached to). Nothing is sent to the host:
        `start` does that, at once (`submit`) or later, from another thread (the executor)."""
        options = prepared.options
        if not options.rerun:
            done = self.store.find_completed(prepared.content_hash, prepared.host)
            if done is not None and self._results(done).result.exists():
                prepared.discard()
                return Submission(done, reused=True)
            same = self._find(prepared.id)
            if same is not None and not same.final and (
                    same.state != State.PREPARED or same.id in self._starting):
                prepared.discard()
                return Submission(same, attached=True)
        commit(prepared)
        record = TaskRecord(id=prepared.id, content_hash=prepared.content_hash,
                            host=prepared.host, name=options.name, nowait=options.nowait,
                            local_dir=str(prepared.local_dir), resources=options.resources,
                            collect=options.collect, placement=prepared.placement)
        with self._launching:
            self.store.add(record)
            self._starting.add(record.id)
        return Submission(record)

    def start(self, record: TaskRecord, prepared: PreparedTask) -> TaskRecord:
        """Stage an accepted task and start it, or leave it waiting for a free slot. A task
        cancelled meanwhile (`kill` before it reached the host) is not started."""
        session = self.session(record.host)
        try:
            if self.store.get(record.id).final:
                return self.store.get(record.id)
            session.agent()  # connects, and checks the host's Python once per connection
            host = session.host
            try:
                staged = session.transport.stage(
                    prepared.id, prepared.local_dir, prepared.files, prepared.extra,
                    start=host.scheduler == "process" and not host.max_running,  # no slot wait
                    streams=prepared.streams)
            finally:
                prepared.release_streams()
            record.remote_dir = staged.root
            with self._launching:  # one store write says where it is staged and what next
                current = self.store.get(record.id)
                if current.state != State.PREPARED:  # cancelled while it was staged
                    # started by the staging request, or only staged: cancelled there too, and
                    # its place recorded, so that a purge removes the host's copy
                    session.request("kill", tasks=[record.id])
                    self.store.update(record.id, remote_dir=record.remote_dir)
                    return self.store.get(record.id)
                if staged.started is not None:
                    session.started(record.id, staged.started)
                    self._submitted(record, None)
                elif self._slots(host) > 0:
                    self._launch(session, record)
                else:
                    record.reason = (f"waiting for a free slot: {session.host.name} runs at "
                                     f"most {session.host.max_running} tasks at once")
                    self.store.update(record.id, remote_dir=record.remote_dir,
                                      reason=record.reason)
        except BaseException as exc:
            self.not_started(record, exc)
            raise
        finally:
            with self._launching:
                self._starting.discard(record.id)
        return self.store.get(record.id)

    def sent_inputs(self, record: TaskRecord) -> Callable[[], Path | None]:
        """Where the inputs the task was sent can be read here, asked for only when the
        objects themselves are gone (the kernel restarted): the prepared file, or, for inputs
        sent from memory (prepare.STREAM_MIN), a copy fetched from the host then."""
        local = TaskPaths(Path(record.local_dir)).inputs if record.local_dir else None

        def find() -> Path | None:
            if local is None or local.exists():
                return local
            try:
                self.session(record.host).transport.sent_inputs(record.id, local)
            except (RemoteMagicError, OSError):
                return None
            return local

        return find

    def not_started(self, record: TaskRecord, exc: BaseException) -> None:
        """An accepted task that will not be started: the store says why."""
        with self._launching:
            self._starting.discard(record.id)
        self.store.update(record.id, state=State.FAILED, reason=f"not started: {exc}",
                          finished=time.time())

    def _slots(self, host: HostConfig, cap: int | None = None) -> int:
        """How many more tasks the host may start now (its max_running, else `cap`).

        The store counts the tasks holding slots; one that ended while no session watched it
        (its kernel restarted) still looks active there, so when the host seems full those
        are asked about first (at most every SLOT_REFRESH seconds)."""
        limit = host.max_running or cap
        if not limit:
            return 1
        held = self._holding(host)
        now = time.monotonic()
        if len(held) >= limit and now >= self._refresh_at.get(host.name, 0.0):
            self._refresh_at[host.name] = now + SLOT_REFRESH
            session = self.session(host)
            unwatched = {r.id: Watch(r.id, False, r.state, r.progress) for r in held
                         if not session.watching(r.id)}
            if unwatched:
                try:
                    session.poll(unwatched)
                except RemoteMagicError:  # the slots stay taken; the next refresh tries again
                    pass
                held = self._holding(host)
        return limit - len(held)

    def _cap(self, host: HostConfig, record: TaskRecord) -> int | None:
        """The slots a waiting task may use on a host without max_running: a sweep's
        elements on a process host run as many at once as the host has cores (a thousand
        processes at once would only thrash it); any other task starts at once."""
        if record.sweep is None or host.scheduler != "process" or host.allocation:
            return None
        return int(self.session(host).hello().get("cpus") or 1)

    def _holding(self, host: HostConfig) -> list[TaskRecord]:
        """The host's tasks that hold one of its slots, as the store knows them."""
        return [r for r in self.store.list(host=host.name, active_only=True)
                if r.state != State.PREPARED]

    def _launch(self, session: HostSession, record: TaskRecord) -> None:
        """Start a staged task: as a process, or as a job of the host's scheduler."""
        host = session.host
        if host.scheduler == "process":
            session.started(record.id, session.request("start", task=record.id,
                                                       push=not host.is_local))
            job_id = None
        else:
            answer = session.request(
                "submit", task=record.id, scheduler=host.scheduler,
                resources={**host.resources, **(record.resources or {})}, setup=host.setup,
                python=host.python, template=host.job_template())
            job_id = answer["job_id"]
        self._submitted(record, job_id)

    def _submitted(self, record: TaskRecord, job_id: str | None) -> None:
        record.state, record.submitted, record.job_id = State.SUBMITTED, time.time(), job_id
        self.store.update(record.id, state=State.SUBMITTED, submitted=record.submitted,
                          job_id=job_id, reason=None, remote_dir=record.remote_dir)

    def _dispatch(self, session: HostSession) -> None:
        """Start waiting tasks as slots free (called by the session after each poll)."""
        with self._launching:
            waiting = [r for r in self.store.list(host=session.host.name, active_only=True)
                       if r.state == State.PREPARED and r.remote_dir
                       and r.id not in self._starting]
            waiting.sort(key=lambda r: (r.created, r.sweep_index or 0))  # oldest first
            for record in waiting:
                if self._slots(session.host, self._cap(session.host, record)) <= 0:
                    return
                try:
                    self._launch(session, record)
                except RemoteMagicError as exc:
                    self.store.update(record.id, state=State.FAILED, finished=time.time(),
                                      reason=f"not started: {exc}")

    def watch(self, record: TaskRecord, *, on_final: Callable[[Update], None] | None = None,
              listener: Callable[[Update], None] | None = None) -> None:
        """Follow a task in the background: `listener` gets every update, `on_final` the
        last one (both from the host session's thread)."""
        self.session(record.host).watch(record.id, state=record.state, on_final=on_final,
                                        listener=listener)

    def follow(self, record: TaskRecord) -> Iterator[Update]:
        """Updates of a task as they come (state, progress, output), until it ends.

        While nothing changes, the last update comes again every FOLLOW_TICK (without its
        output), so that a view can show the time going by. Interrupting the iteration (Ctrl-C)
        detaches: the task runs on, followed quietly.
        """
        session = self.session(record.host)
        watch = session.watch(record.id, live_output=True, state=record.state)
        updates = watch.updates
        assert updates is not None
        last = Update(record.id, record.state, record.reason, record.progress,
                      job_id=record.job_id)
        ended = False
        try:
            while not ended:
                try:
                    last = update = updates.get(timeout=FOLLOW_TICK)
                except queue.Empty:
                    yield replace(last, stdout="", stderr="", events=[], changed=False)
                    continue
                ended = update.final
                yield update
        finally:
            if not ended:
                session.unwatch_output(record.id)

    def result(self, record: TaskRecord, collect_into: Path | None = None, *,
               namespace: dict[str, Any] | None = None,
               originals: Mapping[str, Any] | None = None) -> TaskResult:
        """Load the results of a task that has ended; copy its `--collect` files back.

        `namespace` and `originals` are the notebook's and the objects sent from it, for a
        cell's results to land as the cell would have left them (see `load_result`).
        """
        result = load_result(self._results(record), record.id, record.host,
                             namespace=namespace, originals=originals,
                             inputs=self.sent_inputs(record))
        place = record.placement or {}
        transport = self.session(record.host).transport
        if record.collect and place.get("cwd"):
            result.file_notes.append(f"--collect: the task ran in {place['cwd']}, which is "
                                     "this notebook's folder: its files are already here")
        elif record.collect:
            collected = transport.collect(record.id, record.collect, collect_into or Path.cwd())
            result.collected = collected
            result.file_notes += collected.notes()  # names refused, a search cut short
        if place.get("not_staged"):
            shown = ", ".join(f"{n} ({size / 1e6:.1f} MB)" for n, size in place["not_staged"])
            result.file_notes.append(f"not sent (over the host's auto_files limit): {shown}; "
                                     "send them with --files, or raise auto_files")
        written = [w for w in result.written if w.get("name") not in result.collected]
        if written and place.get("return_files"):
            host = self.session(record.host).host
            copies, returned = plan_return(
                written, Path(place.get("cwd_local") or Path.cwd()),
                place.get("prepared_at", 0.0), limit_bytes(host), record.id)
            for name, target in copies:
                transport.fetch(record.id, name, target)
            result.file_notes += returned.notes()
        self.store.update(record.id, outputs=sorted(result.values))
        return result

    def output(self, record: TaskRecord, offsets: dict[str, int] | None = None
               ) -> Iterator[Update]:
        """The task's printed output and displays from `offsets` on (from the start if
        None), in as many requests as it takes: for output that was not streamed live."""
        session = self.session(record.host)
        offsets = dict(offsets or {"stdout": 0, "stderr": 0, "events": 0})
        while True:
            status = session.request("status", tasks={record.id: offsets})[record.id]
            update = Update(record.id, status["state"], stdout=status.get("stdout", ""),
                            stderr=status.get("stderr", ""), stdout_at=offsets["stdout"],
                            stderr_at=offsets["stderr"], events=status.get("events", []),
                            events_more=status.get("events_more", False),
                            events_end=status.get("events_end"),
                            output_more=status.get("output_more", False))
            for stream in ("stdout", "stderr", "events"):
                offsets[stream] = status.get(f"{stream}_end", offsets[stream])
            yield update
            if not (update.stdout or update.stderr or update.events):
                return

    def _results(self, record: TaskRecord) -> Any:
        session = self.session(record.host)
        return session.transport.results(record.id, Path(record.local_dir or "."))

    def _find(self, task_id: str) -> TaskRecord | None:
        try:
            return self.store.get(task_id)
        except TaskNotFoundError:
            return None

    # ------------------------------------------------------------ allocations

    def allocate(self, name: str, host: str | None, resources: Mapping[str, Any],
                 slots: int | None = None) -> dict[str, Any]:
        """Submit one batch job on `host` that runs a worker; `name` then works as a host.
        Returns the allocation as `allocations()` lists it (it is queued, usually)."""
        if not HOST_NAME_RE.fullmatch(name) or len(name) > 63:
            raise OptionError(f"{clipped(name, 40)!r} cannot name an allocation: it becomes a "
                              "host name, so use letters, digits, '.', '_' and '-' (at most "
                              "63), starting with a letter or digit")
        if slots is not None and slots < 1:
            raise OptionError(f"--slots {slots}: an allocation runs at least one task at once")
        parent = self.host(host)
        config = self.config()
        if parent.allocation is not None:
            raise RemoteMagicError(f"'{parent.name}' is an allocation: start one on the host "
                                   f"it runs on (-q {allocations.known()[parent.name]['host']})")
        if parent.scheduler == "process":
            raise RemoteMagicError(
                f"host '{parent.name}' has no batch scheduler (scheduler: process): an "
                f"allocation is a batch job. Send cells to -q {parent.name} directly; they "
                "already start in warm runners there")
        if name in config.hosts:
            raise RemoteMagicError(f"'{name}' is a host in the hosts file: give the "
                                   "allocation another name")
        wanted = job_resources(parent, dict(resources))
        answer = self.session(parent).request(
            "alloc_start", name=name, scheduler=parent.scheduler, resources=wanted,
            slots=slots, setup=parent.setup, python=parent.python, template=parent.job_template())
        allocations.remember(name, {"host": parent.name, "job_id": answer.get("job_id"),
                                    "created": time.time()})
        stale = self._sessions.pop(name, None)  # an ended allocation of that name had one
        if stale is not None:
            stale.close()
        return {**answer, "host": parent.name}

    def allocations(self, host: str | None = None) -> list[dict[str, Any]]:
        """The allocations this user started (of `host`, or all), as their hosts see them
        now: one request per host."""
        config = self.config()
        by_host: dict[str, list[str]] = defaultdict(list)
        for name, entry in allocations.known().items():
            if entry.get("host") in config.hosts and host in (None, entry["host"]):
                by_host[entry["host"]].append(name)
        found = []
        for host_name, names in sorted(by_host.items()):
            listed = {a["name"]: a for a in self.session(host_name).request("alloc_list")}
            for name in sorted(names):
                found.append({"name": name, "state": "ended", "reason": "gone from the host",
                              **listed.get(name, {}), "host": host_name})
        return found

    def stop_allocation(self, name: str) -> dict[str, Any]:
        """End an allocation: tasks running on it are cancelled, its job ends."""
        entry = allocations.known().get(name)
        if entry is None:
            raise RemoteMagicError(f"there is no allocation called '{name}'; "
                                   "%remote_alloc lists them")
        answer = self.session(entry["host"]).request("alloc_stop", name=name)
        return {**answer, "host": entry["host"]}

    # ------------------------------------------------------------ managing tasks

    def find(self, prefix: str) -> TaskRecord:
        return self.store.resolve(prefix)

    def status(self, ids: list[str] | None = None, host: str | None = None,
               include_done: bool = True, limit: int | None = None,
               recent: tuple[int, float] | None = None) -> list[TaskRecord]:
        """Task records, with every unfinished one refreshed (one request per host). Without
        `include_done`, the unfinished ones; with `recent` (rows, hours) too, also the latest
        `rows` that finished in the last `hours` (what a user just ran)."""
        if ids:
            records = [self.find(i) for i in ids]
        elif recent and not include_done:
            rows, hours = recent
            records = self.store.list(host=host, active_only=True, limit=limit,
                                      finished_since=time.time() - hours * 3600)
            older = {r.id for r in [r for r in records if r.final][rows:]}
            records = [r for r in records if r.id not in older]
        else:
            records = self.store.list(host=host, active_only=not include_done, limit=limit)
        active: dict[str, list[TaskRecord]] = defaultdict(list)
        for record in records:
            if not record.final and record.state != State.PREPARED:
                active[record.host].append(record)
        known = self._known()
        for host_name, group in active.items():
            if host_name not in known:  # its last known state stands, and says why
                for record in group:
                    self.store.update(record.id, reason=_gone(host_name))
                continue
            self.session(host_name).poll(
                {r.id: Watch(r.id, False, r.state, r.progress, reason=r.reason) for r in group})
        return [self.store.get(r.id) for r in records]

    def log(self, record: TaskRecord, stream: str = "stdout") -> str:
        return self.session(record.host).request("log", task=record.id, stream=stream)

    def kill(self, records: list[TaskRecord]) -> dict[str, str]:
        outcome: dict[str, str] = {}
        by_host: dict[str, list[TaskRecord]] = defaultdict(list)
        for given in records:
            with self._launching:  # as it is now: an executor may have started it meanwhile
                record = self._find(given.id) or given
                if record.state == State.PREPARED:  # not started: no dispatch will start it now
                    self._starting.discard(record.id)  # a queued start will not happen
                    self.store.update(record.id, state=State.CANCELLED,
                                      reason="cancelled by the user", finished=time.time())
                    outcome[record.id] = "cancelled"
                    if not record.remote_dir:  # not sent yet
                        continue
                    by_host[record.host].append(record)  # staged, waiting for a slot: the
                    continue  # host's copy is cancelled there too
            if record.final:
                outcome[record.id] = f"already {record.state}"
            else:
                by_host[record.host].append(record)
        known = self._known()
        for host_name, group in by_host.items():
            if host_name not in known:
                outcome.update({r.id: f"not cancelled: {_gone(host_name)}; add it back to "
                                      "cancel the task there, or %remote_purge it to forget "
                                      "it here" for r in group})
                continue
            session = self.session(host_name)
            outcome.update(session.request("kill", tasks=[r.id for r in group]))
            session.poke()
        return outcome

    def purge(self, records: list[TaskRecord]) -> dict[str, str]:
        """Remove finished tasks everywhere: host directory, local copy, store entry."""
        outcome: dict[str, str] = {}
        by_host: dict[str, list[TaskRecord]] = defaultdict(list)
        for record in records:
            by_host[record.host].append(record)
        known = self._known()
        for host_name, group in by_host.items():
            if host_name not in known:  # nothing to ask there: forget the tasks here
                done = {r.id: "absent" for r in group}
            else:
                try:
                    done = self.session(host_name).request("purge",
                                                           tasks=[r.id for r in group])
                except RemoteMagicError as exc:
                    done = {r.id: f"not purged: {exc}" for r in group}
            for record in group:
                said = done.get(record.id, "absent")
                if said in ("removed", "absent"):
                    if record.local_dir:
                        shutil.rmtree(record.local_dir, ignore_errors=True)
                    self.store.delete([record.id])
                    said = "removed" if host_name in known else \
                        f"removed here; {_gone(host_name)}, so its files there stay"
                outcome[record.id] = said
        self._forget_sweeps({r.sweep for r in records if r.sweep})
        return outcome

    def older_than(self, seconds: float, host: str | None = None) -> list[TaskRecord]:
        cutoff = time.time() - seconds
        return [r for r in self.store.list(host=host) if r.final and r.created < cutoff]


def _gone(host: str) -> str:
    return f"host '{host}' is no longer in the hosts file"


def parse_age(text: str) -> float:
    """'7d', '12h', '30m', '45s' (or a bare number of days) in seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*", text)
    if not match:
        raise RemoteMagicError(f"--older {text!r}: write an age such as 7d, 12h, 30m or 45s.")
    unit = {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 86400}[match.group(2)]
    return float(match.group(1)) * unit


_client: Client | None = None


def get_client() -> Client:
    """The process-wide client shared by the magics and executors."""
    global _client
    if _client is None:
        _client = Client()
    return _client
