"""`RemoteExecutor`: a concurrent.futures.Executor whose calls run as tasks on a host.

Each `submit(fn, *args, **kwargs)` becomes a task on the same path as a `%%remote` cell
(prepare, stage, start, follow, retrieve); the Future completes when the host reports the
task's end, from the host session's thread, without anyone having to poll.

`submit` connects to the host if it is not connected (so a refused host key or a login prompt
happens in the caller's thread, and raises there), prepares the call (its arguments travel as
they are at that moment; one that cannot travel raises there) and records it, then returns:
one thread per executor stages and starts the tasks in the order they were submitted, so a
loop of submits is not held up by round trips to the host. A failure to start is the Future's
exception.

A Future is pending until its task runs on the host (on a process host: once started; on a
batch host: once the scheduler runs its job), then running. `cancel()` works while it is
pending, wherever the task waits: not yet sent (it never reaches the host), or queued there
(by the batch scheduler, or for a free slot), where it is cancelled. A running call is not
stopped by `cancel()`, which then returns False as for any Executor: `shutdown(cancel_futures=
True)`, `Client.kill` or `remote-magic kill ID` stop it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor, Future, InvalidStateError
from typing import Any, Callable

from ..config.hosts import check_resources
from ..errors import RemoteMagicError, TaskFailedError
from ..wire.states import State
from .core import Client, get_client
from .prepare import PreparedTask, TaskOptions, prepare_call
from .store import TaskRecord
from .sweeps import prepare_call_sweep


class RemoteFuture(Future):  # type: ignore[type-arg]
    """A call's Future, which knows its task (`task_id`) and cancels it where it waits."""

    def __init__(self, task_id: str, on_cancel: Callable[[RemoteFuture], None]) -> None:
        super().__init__()
        self.task_id = task_id
        self._on_cancel = on_cancel

    def cancel(self) -> bool:
        if not super().cancel():  # running or done: as any Future, it is not cancelled
            return False
        self._on_cancel(self)
        return True

    def mark_running(self) -> None:
        """The task runs on the host: the Future is running (unless cancelled or done).
        `set_running_or_notify_cancel` is called once, while the Future is pending or newly
        cancelled (its waiters then hear of the cancel): called again, it logs a CRITICAL
        record that a user would see on stderr. Checked under the Future's own (reentrant)
        lock, against its states' names (those of concurrent.futures)."""
        with self._condition:
            if self._state in ("PENDING", "CANCELLED"):
                self.set_running_or_notify_cancel()


class RemoteExecutor(Executor):
    """Run function calls on `host` ("localhost" needs no configuration).

    Resources (walltime, cores, mem, ...) apply to every call, as `%%remote` options do.
    An identical call that already completed is answered from its stored result unless
    `rerun=True`.
    """

    def __init__(self, host: str | None = None, *, rerun: bool = False, name: str | None = None,
                 client: Client | None = None, **resources: Any) -> None:
        self._client = client or get_client()
        self._host = self._client.host(host)
        self._rerun = rerun
        self._name = name
        self._resources = check_resources(resources)
        self._shutdown = False
        self._futures: set[Future[Any]] = set()
        self._lock = threading.Lock()
        self._starts: queue.SimpleQueue[tuple[TaskRecord, PreparedTask, Future[Any]] | None] = \
            queue.SimpleQueue()
        self._starter: threading.Thread | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a RemoteExecutor after shutdown()")
        options = TaskOptions(resources=dict(self._resources), name=self._name,
                              rerun=self._rerun, nowait=True)
        prepared = prepare_call(fn, args, kwargs, self._host, options)
        submission = self._client.accept(prepared)
        record = submission.record
        if not (submission.reused or submission.attached):
            try:
                self._client.reach(self._host)  # a host key refused, a password asked: here
            except BaseException as exc:
                self._client.not_started(record, exc)
                raise
        future = RemoteFuture(record.id, self._cancelled)
        with self._lock:
            self._futures.add(future)
            if not (submission.reused or submission.attached):
                self._starts.put((record, prepared, future))
                if self._starter is None:
                    self._starter = threading.Thread(target=self._start_in_order, daemon=True,
                                                     name="remote-executor-starts")
                    self._starter.start()
        if submission.reused or submission.attached:
            self._follow(future, record)
        return future

    def map(self, fn: Callable[..., Any], *iterables: Any, timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """As `Executor.map`; on a batch host the calls go as ONE job array (a sweep), with
        `fn` sent once, rather than a job per call."""
        calls = list(zip(*iterables))
        if self._host.scheduler == "process" or len(calls) < 2:
            columns = [list(column) for column in zip(*calls)]  # the iterables, consumed
            return super().map(fn, *columns, timeout=timeout, chunksize=chunksize)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a RemoteExecutor after shutdown()")
        options = TaskOptions(resources=dict(self._resources), name=self._name,
                              rerun=self._rerun, nowait=True)
        self._client.reach(self._host)
        sweep = prepare_call_sweep(fn, calls, self._host, options)
        records = self._client.submit_sweep(sweep).records
        futures = []
        for record in records:
            future: Future[Any] = Future()
            future.task_id = record.id  # type: ignore[attr-defined]
            future.set_running_or_notify_cancel()
            with self._lock:
                self._futures.add(future)
            self._follow(future, record)
            futures.append(future)
        deadline = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator[Any]:
            for future in futures:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                yield future.result(left)

        return results()

    def _start_in_order(self) -> None:
        """Stage and start the accepted tasks one after another, in submission order."""
        while True:
            item = self._starts.get()
            if item is None:
                return
            record, prepared, future = item
            if future.cancelled():  # never sent (cancel() marked it cancelled in the store)
                self._forget(future)
                continue
            try:
                record = self._client.start(record, prepared)
            except BaseException as exc:  # noqa: BLE001 - the Future must always complete
                future.set_exception(exc)
                self._forget(future)
                continue
            self._follow(future, record)

    def _follow(self, future: Future[Any], record: TaskRecord) -> None:
        if record.final:
            self._complete(future, record)
            return
        # On a process host a task runs once started ("submitted"); on a batch host that
        # means queued, and it runs when the scheduler says so.
        runs = {State.RUNNING} | ({State.SUBMITTED} if self._host.scheduler == "process"
                                  else set())
        if record.state in runs and isinstance(future, RemoteFuture):
            future.mark_running()

        def heard(update: Any) -> None:
            if update.state in runs and isinstance(future, RemoteFuture):
                future.mark_running()

        self._client.watch(record, listener=heard, on_final=lambda update: self._complete(
            future, self._client.store.get(record.id)))

    def _cancelled(self, future: RemoteFuture) -> None:
        """A pending Future was cancelled: its task goes too, wherever it waits (not sent
        yet, or queued on the host). A host that cannot be reached now keeps it queued there;
        the Future stays cancelled."""
        try:
            self._client.kill([self._client.store.get(future.task_id)])
        except RemoteMagicError:
            pass
        # wait() and as_completed() see it done now (unless the session thread, hearing
        # of the task meanwhile, told them already: a second notice would raise)
        future.mark_running()
        self._forget(future)

    def _complete(self, future: Future[Any], record: TaskRecord) -> None:
        if future.cancelled():
            self._forget(future)
            return
        outcome: BaseException | None = None
        value = None
        try:
            if record.remote_dir is None:  # ended before it reached the host (cancelled)
                raise TaskFailedError(f"Task {record.id} on {record.host} {record.state}: "
                                      f"{record.reason or 'no reason recorded'}",
                                      remote_type=record.state, task_id=record.id)
            result = self._client.result(record)
            outcome = result.error
            value = result.values.get("_rm_result")
        except BaseException as exc:  # noqa: BLE001 - the Future must always complete
            outcome = exc
        try:
            if outcome is not None:
                future.set_exception(outcome)
            else:
                future.set_result(value)
        except InvalidStateError:  # cancelled meanwhile
            pass
        self._forget(future)

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
            starter = self._starter
            if starter is not None:
                self._starts.put(None)  # the starter ends once the tasks before it started
        if cancel_futures:
            started = [f for f in pending if not f.cancel() and not f.done()]
            ids = [f.task_id for f in started]  # type: ignore[attr-defined]
            if ids:
                self._client.kill([self._client.store.get(i) for i in ids])
        if wait:
            if starter is not None:
                starter.join()
            for future in pending:
                try:
                    future.exception()
                except BaseException:  # noqa: BLE001 - shutdown only waits
                    pass
