"""`Client`'s sweep methods: record and start a sweep's elements (one job array on a batch
host), follow them, gather their results, retry the failed ones; and find a task or a sweep
by id. Kept apart from `core.py`, which holds the life of one task: `Client` inherits them,
and they use its task methods (`result`, `status`, `not_started`, its slots)."""

from __future__ import annotations

import queue
import shutil
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.hosts import HostConfig
from ..errors import OptionError, RemoteMagicError, TaskNotFoundError
from ..wire.serialization import load_namespace
from ..wire.states import State
from ..wire.taskdir import PREPARED_FILES, RESULT_FILES, TaskPaths
from .prepare import PreparedTask
from .session import FOLLOW_TICK, Update
from .store import RECENT_HOURS, RECENT_ROWS, SweepRecord, TaskRecord
from .sweeps import (
    PreparedSweep,
    SweepResult,
    check_stageable,
    commit_sweep,
    gather,
    shared_files,
    stage_elements,
)


@dataclass
class SweepSubmission:
    sweep: SweepRecord
    records: list[TaskRecord]  # each element's task, in the order of the values
    reused: int = 0  # elements whose identical task had completed: not run again
    attached: int = 0  # elements whose identical task was running: followed, not started


class SweepMethods:
    """Mixed into `Client` (see the module's docstring)."""

    def submit_sweep(self, sweep: PreparedSweep) -> SweepSubmission:
        """Record a prepared sweep and start its elements: on a batch host as ONE job array,
        elsewhere each as a task, as slots allow. An element identical to one that completed
        is not run again (unless --rerun); one identical to a running one is followed."""
        options = sweep.options
        host = self.host(sweep.host)
        check_stageable(sweep)
        records: list[TaskRecord] = []
        new: dict[str, tuple[Any, TaskRecord]] = {}
        reused = attached = 0
        for index, element in enumerate(sweep.elements):
            if element.id in new:  # the same value twice: one task stands for both
                records.append(new[element.id][1])
                continue
            if not options.rerun:
                done = self.store.find_completed(element.content_hash, sweep.host)
                if done is not None:
                    records.append(done)
                    reused += 1
                    continue
                same = self._find(element.id)
                if same is not None and not same.final and same.state != State.PREPARED:
                    records.append(same)
                    attached += 1
                    continue
            record = TaskRecord(id=element.id, content_hash=element.content_hash,
                                host=sweep.host, name=options.name, nowait=options.nowait,
                                resources=options.resources, collect=options.collect,
                                placement=sweep.base.placement, sweep=sweep.id,
                                sweep_index=index)
            new[element.id] = (element, record)
            records.append(record)
        commit_sweep(sweep, [e for e, _ in new.values()])
        shared = shared_files(sweep)  # where the shared part is now
        for element, record in new.values():
            record.local_dir = str(element.local_dir)
        saved = SweepRecord(sweep.id, sweep.host, [r.id for r in records], sweep.labels,
                            sweep.names, sweep.outputs, name=options.name,
                            options={"shared": sweep.shared, "local": str(sweep.base.local_dir),
                                     "keyed": sweep.keyed})
        fresh = [r for _, r in new.values()]
        with self._launching:
            self.store.add_many(fresh, saved)
            self._starting.update(r.id for r in fresh)
        try:
            if fresh:
                self._start_elements(host, [e for e, _ in new.values()], fresh, shared)
        finally:
            with self._launching:
                self._starting.difference_update(r.id for r in fresh)
        return SweepSubmission(saved, self.store.many([r.id for r in records]), reused,
                               attached)

    def _start_elements(self, host: HostConfig, elements: list[Any],
                        records: list[TaskRecord], shared: list[Any]) -> None:
        """Stage the sweep's new elements and start them (see `submit_sweep`)."""
        session = self.session(host)
        try:
            session.agent()
            direct = host.scheduler == "process" and (host.allocation is not None or (
                not host.max_running and len(records) <= self._cap(host, records[0])))
            answers = stage_elements(session.transport, elements, shared, start=direct)
        except BaseException as exc:
            for record in records:
                self.not_started(record, exc)
            raise
        waiting: list[TaskRecord] = []
        with self._launching:
            for record in records:
                answer = answers.get(record.id, {})
                record.remote_dir = answer.get("root")
                if answer.get("existing") is not None or answer.get("started") is not None:
                    self._submitted(record, None)  # its polls say how it is doing
                else:
                    waiting.append(record)
            if not waiting:
                return
            if host.scheduler == "process":
                for record in waiting:
                    self.store.update(record.id, remote_dir=record.remote_dir,
                                      reason="waiting for a free slot")
                session.dispatcher = self._dispatch  # starts them as slots free
                self._dispatch(session)
                return
        try:
            answer = session.request(
                "submit_array", tasks=[r.id for r in waiting], scheduler=host.scheduler,
                resources={**host.resources, **(waiting[0].resources or {})},
                setup=host.setup, python=host.python, template=host.job_template(),
                limit=host.max_running)
        except BaseException as exc:
            for record in waiting:
                self.not_started(record, exc)
            raise
        with self._launching:
            for record in waiting:
                job = answer["jobs"].get(record.id) or \
                    (answer["attached"].get(record.id) or {}).get("job_id")
                self._submitted(record, job)

    def sweep(self, sweep_id: str) -> SweepRecord:
        """A sweep from its id or a unique prefix of it."""
        prefix = sweep_id.strip().lower()
        found = self.store.sweep_ids(prefix) if prefix else []
        if len(found) != 1:
            raise TaskNotFoundError(
                f"No sweep with id '{prefix}'." if not found else
                f"Sweep id '{prefix}' is ambiguous ({', '.join(found[:5])}): type more of it.")
        record = self.store.sweep(found[0])
        assert record is not None
        return record

    def task_or_element(self, prefix: str, index: int | None = None,
                        how: str = "log") -> TaskRecord:
        """The task whose id starts so, or element `index` of the sweep whose id does
        (`how` names the command in the errors)."""
        found = self.find_any(prefix)
        if isinstance(found, SweepRecord):
            if index is None or not 0 <= index < len(found.elements):
                raise OptionError(f"{how} {found.id} INDEX: name the element, from 0 to "
                                  f"{len(found.elements) - 1}")
            return self.find(found.elements[index])
        if index is not None:
            raise OptionError(f"{how} {found.id}: a task has no elements; an INDEX goes with "
                              "a sweep's id")
        return found

    def find_any(self, prefix: str) -> TaskRecord | SweepRecord:
        """The task or the sweep whose id starts so (the magics take either)."""
        sweeps = self.store.sweep_ids(prefix.strip().lower())
        try:
            task = self.find(prefix)
        except TaskNotFoundError:
            if len(sweeps) == 1:
                return self.sweep(sweeps[0])
            if sweeps:
                self.sweep(prefix)  # raises, naming them
            raise
        if sweeps:
            raise TaskNotFoundError(f"'{prefix}' starts the ids of a task ({task.id}) and of "
                                    f"a sweep ({sweeps[0]}): type more of it.")
        return task

    def records_for(self, prefixes: list[str]) -> list[TaskRecord]:
        """The tasks these ids name, a sweep's id standing for all its elements (each task
        once, in the order given)."""
        found: dict[str, TaskRecord] = {}
        for prefix in prefixes:
            given = self.find_any(prefix)
            if isinstance(given, SweepRecord):
                found.update((r.id, r) for r in self.elements(given))
            else:
                found[given.id] = given
        return list(found.values())

    def status_view(self, prefixes: list[str], host: str | None = None, everything: bool = False,
                    live: bool = False, recent: tuple[int, float] | None = None
                    ) -> tuple[list[TaskRecord], dict[str, list[TaskRecord]]]:
        """What a status table shows: the tasks (and sweeps) named, else the unfinished ones
        and those that finished recently (`Client.status`'s `recent`; all with
        `everything`, the unfinished only with `live`), refreshed; and the sweeps shown as
        one row each (a sweep named with `everything` is shown element by element)."""
        given = [self.find_any(p) for p in prefixes]
        ids = [r.id for r in self.records_for(prefixes)] or None
        expanded = {g.id for g in given if isinstance(g, SweepRecord)} if everything else set()
        records = self.status(ids, host=host, include_done=everything or bool(ids),
                              recent=None if live else recent or (RECENT_ROWS, RECENT_HOURS))
        return records, self.sweep_groups(records, expanded)

    def sweep_groups(self, records: list[TaskRecord],
                     expanded: Iterable[str] = ()) -> dict[str, list[TaskRecord]]:
        """The sweeps these tasks are elements of (but `expanded` ones), each with ALL its
        elements as the store has them: what a status table shows as one row per sweep."""
        groups = {}
        for sweep_id in dict.fromkeys(r.sweep for r in records if r.sweep):
            sweep = self.store.sweep(sweep_id) if sweep_id not in expanded else None
            if sweep is not None:
                groups[sweep_id] = self.elements(sweep)
        return groups

    def elements(self, sweep: SweepRecord) -> list[TaskRecord]:
        """The sweep's element tasks in the order of its values (purged ones left out)."""
        return self.store.many(sweep.elements)

    def follow_sweep(self, sweep: SweepRecord) -> Iterator[tuple[int, Update]]:
        """(element index, update) as the sweep's elements move, until all have ended; every
        FOLLOW_TICK without news, (-1, an empty update), so that a view can show time going
        by. Interrupting the iteration detaches: the elements run on."""
        updates: queue.Queue[Update] = queue.Queue()
        following = threading.Event()
        following.set()

        def hear(update: Update) -> None:  # news only, and only while someone reads them
            if following.is_set() and (update.changed or update.final or update.problem
                                       or update.stdout or update.stderr):
                updates.put(update)

        where: dict[str, list[int]] = defaultdict(list)
        for index, task_id in enumerate(sweep.elements):
            where[task_id].append(index)
        pending = set()
        for record in self.elements(sweep):
            if record.state == State.PREPARED and not record.remote_dir and \
                    record.id not in self._starting:  # its kernel stopped before sending it
                self.not_started(record, RemoteMagicError(
                    f"it was never sent; %remote_retry {sweep.id} sends it"))
                continue
            if not record.final:
                pending.add(record.id)
                session = self.session(record.host)
                if record.state == State.PREPARED:  # waiting for a slot (a kernel restarted)
                    session.dispatcher = self._dispatch
                session.watch(record.id, state=record.state, listener=hear)
        try:
            while pending:
                try:
                    update = updates.get(timeout=FOLLOW_TICK)
                except queue.Empty:
                    yield -1, Update("", "")
                    continue
                if update.final:
                    pending.discard(update.task_id)
                for index in where.get(update.task_id, ()):
                    yield index, update
        finally:
            following.clear()


    def sweep_result(self, sweep: SweepRecord, *, namespace: dict[str, Any] | None = None,
                     originals: Mapping[str, Any] | None = None,
                     bindings: list[dict[str, Any]] | None = None,
                     keyed: bool = False) -> SweepResult:
        """Load the results of the sweep's ended elements, each name as a list in the order
        of the values (a dict keyed by the values with `keyed`). An element still running
        holds None; one that failed, its exception (see `SweepResult.error`).

        `originals` are the objects the elements shared, `bindings` each one's own values
        (else read back from its inputs), as `result` takes them."""
        records = {r.id: r for r in self.elements(sweep)}
        loaded: dict[str, tuple[str, Any]] = {}
        elements: list[tuple[str, Any]] = []
        for index, task_id in enumerate(sweep.elements):
            record = records.get(task_id)
            if record is None:
                elements.append(("purged", _Unloaded(TaskNotFoundError(
                    f"task {task_id} was purged"))))
                continue
            if task_id not in loaded:
                if not record.final:
                    loaded[task_id] = (record.state, None)
                else:
                    own = bindings[index] if bindings is not None else {}
                    try:
                        loaded[task_id] = (record.state, self.result(
                            record, namespace=namespace,
                            originals={**(originals or {}), **own}))
                    except RemoteMagicError as exc:
                        loaded[task_id] = (State.FAILED, _Unloaded(exc))
            elements.append(loaded[task_id])
        keys = None
        if keyed:
            keys = [_key(b) for b in bindings] if bindings is not None else \
                [_key(self._binding(records.get(t))) for t in sweep.elements]
        result = gather(sweep.id, sweep.labels, sweep.outputs, elements, keys)
        said = [note for _, task in loaded.values() for note in getattr(task, "file_notes", [])]
        result.notes = list(dict.fromkeys(said))
        return result

    def _binding(self, record: TaskRecord | None) -> dict[str, Any]:
        """An element's own values, read back from the inputs it was sent."""
        if record is None or not record.local_dir:
            raise RemoteMagicError("a purged element's value is not known: keyed results "
                                   "need every element")
        return load_namespace(TaskPaths(record.local_dir).inputs)

    def retry_sweep(self, sweep: SweepRecord) -> list[TaskRecord]:
        """Run the sweep's failed, cancelled, timed-out and lost elements again (as one
        smaller job array on a batch host); the completed ones stay. Returns the tasks
        started."""
        host = self.host(sweep.host)
        redo = list({r.id: r for r in self.elements(sweep)
                     if r.final and r.state != State.COMPLETED}.values())
        if not redo:
            return []
        options = sweep.options or {}
        shared = [(TaskPaths(options.get("local", "")).inputs,
                   {"sha256": options.get("shared"), "name": TaskPaths(".").shared.name,
                    "copy": False})]
        if not shared[0][0].is_file():
            raise RemoteMagicError(f"sweep {sweep.id}: its shared inputs are gone from this "
                                   "machine, so it cannot be retried; run the cell again")
        elements = []
        for record in redo:
            local = Path(record.local_dir or "")
            for name in (*RESULT_FILES, TaskPaths(".").fetched.name):
                (local / name).unlink(missing_ok=True)  # the failed run's, not the new one's
            elements.append(PreparedTask(id=record.id, content_hash=record.content_hash,
                                         host=record.host, local_dir=local, spec={},
                                         files=list(PREPARED_FILES)))
            self.store.update(record.id, state=State.PREPARED, reason=None, job_id=None,
                              remote_dir=None, submitted=None, started=None, finished=None,
                              progress=None)
        with self._launching:
            self._starting.update(r.id for r in redo)
        try:
            self._start_elements(host, elements, redo, shared)
        finally:
            with self._launching:
                self._starting.difference_update(r.id for r in redo)
        return self.store.many([r.id for r in redo])

    def _forget_sweeps(self, sweep_ids: set[str]) -> None:
        """Sweeps none of whose elements is left: their record and their shared inputs'
        local copy go too."""
        for sweep_id in sweep_ids:
            sweep = self.store.sweep(sweep_id)
            if sweep is not None and not self.store.many(sweep.elements):
                local = (sweep.options or {}).get("local")
                if local:
                    shutil.rmtree(local, ignore_errors=True)
                self.store.delete_sweeps([sweep_id])


class _Unloaded:
    """An element whose results could not be loaded: what went wrong stands in for them."""

    def __init__(self, error: BaseException) -> None:
        self.error, self.values = error, {}


def _key(binding: Mapping[str, Any]) -> Any:
    """An element's key in keyed results: its value, or the tuple of its values."""
    values = tuple(binding.values())
    return values[0] if len(values) == 1 else values
