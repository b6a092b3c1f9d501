"""`RemoteExecutor`: a concurrent.futures.Executor whose calls run as tasks on a host.

Each `submit(fn, *args, **kwargs)` becomes a task on the same path as a `%%remote` cell
(prepare, stage, start, follow, retrieve); the Future completes when the host reports the
task's end, from the host session's thread, without anyone having to poll.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor, Future
from typing import Any, Callable

from ..config.hosts import check_resources
from .core import Client, get_client
from .prepare import TaskOptions, prepare_call
from .session import Update
from .store import TaskRecord


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

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a RemoteExecutor after shutdown()")
        options = TaskOptions(resources=dict(self._resources), name=self._name,
                              rerun=self._rerun, nowait=True)
        prepared = prepare_call(fn, args, kwargs, self._host, options)
        submission = self._client.submit(prepared)
        future: Future[Any] = Future()
        future.task_id = submission.record.id  # type: ignore[attr-defined]
        future.set_running_or_notify_cancel()
        with self._lock:
            self._futures.add(future)
        record = submission.record
        if record.final:
            self._complete(future, record)
        else:
            self._client.watch(
                record, on_final=lambda update: self._on_final(future, record, update))
        return future

    def _on_final(self, future: Future[Any], record: TaskRecord, update: Update) -> None:
        self._complete(future, self._client.store.get(record.id))

    def _complete(self, future: Future[Any], record: TaskRecord) -> None:
        try:
            result = self._client.result(record)
            if result.error is not None:
                future.set_exception(result.error)
            else:
                future.set_result(result.values.get("_rm_result"))
        except BaseException as exc:  # noqa: BLE001 - the Future must always complete
            future.set_exception(exc)
        with self._lock:
            self._futures.discard(future)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            ids = [f.task_id for f in pending if not f.done()]  # type: ignore[attr-defined]
            if ids:
                self._client.kill([self._client.store.get(i) for i in ids])
        if wait:
            for future in pending:
                try:
                    future.exception()
                except BaseException:  # noqa: BLE001 - shutdown only waits
                    pass
