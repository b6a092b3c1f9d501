"""Retrieve: read a finished task's files back into Python objects.

Nothing here touches IPython: the magics decide how to show what this returns, and the
executor hands the same objects to a Future.
"""

from __future__ import annotations

import importlib
import json
import linecache
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import RemoteTaskError, TaskFailedError, error_for, rebuild_error
from ..wire import ambient
from ..wire.pickling import loads
from ..wire.serialization import AMBIENT, EXCEPTION, IN_PLACE, load_namespace
from ..wire.states import State
from ..wire.taskdir import TaskPaths, parse_state, read_json
from .inplace import update_in_place

# The inputs file a task was sent, to load the sent objects from when the kernel no longer
# holds them: its path, or a function giving it (fetched from the host when first asked).
Inputs = Union[Path, Callable[[], Optional[Path]], None]


@dataclass
class Shown:
    """One thing to display: a Python object, or a ready MIME bundle."""

    obj: Any = None
    bundle: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskResult:
    task_id: str
    host: str
    state: str
    reason: str | None
    values: dict[str, Any] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    # what the task displayed, in order (see `displays`; `output.OutputStream` shows them)
    entries: list[dict[str, Any]] = field(default_factory=list)
    value: Shown | None = None
    error: RemoteTaskError | None = None
    collected: list[str] = field(default_factory=list)  # --collect files copied back
    written: list[dict[str, Any]] = field(default_factory=list)  # files the cell wrote
    file_notes: list[str] = field(default_factory=list)  # what happened to files, for the user
    # the new content of inputs the task changed in place, and the objects that were sent
    mutated: dict[str, Any] = field(default_factory=dict)
    originals: Mapping[str, Any] | None = None
    rebound: dict[str, str] = field(default_factory=dict)  # changed, but not in place: why
    settings: dict[str, Any] = field(default_factory=dict)  # module settings it changed
    unsettled: list[str] = field(default_factory=list)  # of those, what could not be applied

    def apply(self, namespace: dict[str, Any]) -> list[str]:
        """Leave `namespace` as the cell would have: the objects it changed are changed here
        (in place when the type allows it, so other names for them see it too), the names it
        bound are bound, the ones it deleted are gone."""
        for name, new in self.mutated.items():
            old = self.originals.get(name) if self.originals is not None else None
            if old is not None and update_in_place(old, new):
                continue
            if name not in self.values:
                namespace[name] = new
                self.rebound[name] = (f"a {type(new).__name__} cannot be updated in place"
                                      if old is not None else "the object sent is not here")
        namespace.update(self.values)
        for name in self.deleted:
            namespace.pop(name, None)
        self.unsettled = ambient.apply_changes(self.settings)
        return sorted(self.values)

    @property
    def changed(self) -> list[str]:
        """Every name whose value the cell set or changed."""
        return sorted(set(self.values) | set(self.mutated))


def load_result(paths: TaskPaths, task_id: str, host: str, *,
                namespace: dict[str, Any] | None = None,
                originals: Mapping[str, Any] | None = None,
                inputs: Inputs = None) -> TaskResult:
    """Everything the task left: outputs, displays, and the error if it failed.

    Functions the cell defined get `namespace` as their globals. The task refers to objects
    the notebook sent by name: they resolve in `originals` (the objects sent, when this kernel
    still holds them), else in a fresh load of the `inputs` file it was sent.
    """
    result = TaskResult(task_id=task_id, host=host, state=State.FAILED, reason=None,
                        originals=originals)
    try:
        record = _read(paths.state, default={"state": State.PREPARED, "reason": None},
                       needs=("state",), parse=_state_record)
        result.state, result.reason = record["state"], record.get("reason")
        raised = None
        meta = _read(paths.result, default=None)
        if meta is None and result.state == State.COMPLETED:
            raise _Damaged(paths.result, "is missing")
        sent = _Sent(originals, inputs)
        if meta is not None:
            raised = _load_outputs(paths, meta, result, namespace, sent)
            if paths.displays.exists():
                shown = _load(paths.displays, {}, None, None)
                result.entries = shown.get("displays") or []
                if shown.get("result") is not None:
                    result.value = _shown(shown["result"], namespace, sent)
        if result.state != State.COMPLETED:
            result.error = _error(paths, result, raised)
    except _Damaged as damage:
        result.state = State.FAILED
        result.error = TaskFailedError(
            f"Task {task_id} on {host} left results that cannot be read: {damage.path} "
            f"{damage.why}. Its other files are still on the host (%remote_log {task_id}); "
            "run the cell again with --rerun.", remote_type="damaged results",
            task_id=task_id)
        return result
    return result


class _Damaged(Exception):
    def __init__(self, path: Path, why: str) -> None:
        super().__init__(why)
        self.path, self.why = path, why


def _read(path: Path, default: Any, needs: tuple[str, ...] = (),
          parse: Callable[[bytes], Any] = json.loads) -> Any:
    """A JSON file of the task: `default` when absent, _Damaged when unreadable or without
    the text fields it `needs`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return default
    except OSError as exc:
        raise _Damaged(path, f"cannot be read ({exc.strerror})") from None
    try:
        value = parse(data)
    except ValueError:
        raise _Damaged(path, "is not valid JSON (damaged or cut short)") from None
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) for k in needs):
        raise _Damaged(path, "does not hold what a task writes there")
    return value


def _state_record(data: bytes) -> Any:
    """The state file's current record (taskdir.parse_state); without one, what the file
    holds, for `_read` to say what is wrong with it (not JSON, or not a record)."""
    record = parse_state(data)
    return record if record is not None else json.loads(data)


def _load(path: Path, failed: dict[str, str], namespace: dict[str, Any] | None,
          refs: Mapping[str, Any] | None) -> dict[str, Any]:
    try:
        return load_namespace(path, namespace=namespace, refs=refs, failed=failed)
    except ValueError as exc:  # not ours, cut short, corrupt: the message names the file
        raise _Damaged(path, f"is damaged ({exc})") from None


def _load_outputs(paths: TaskPaths, meta: dict[str, Any], result: TaskResult,
                  namespace: dict[str, Any] | None, sent: _Sent) -> Any:
    """Load every output on its own: one that cannot be loaded here is reported by name
    (and stays on the host, to be fetched again), the others still land. Returns what the
    cell raised, if it did."""
    failed: dict[str, str] = {}
    values = _load(paths.outputs, failed, namespace, sent) if paths.outputs.exists() else {}
    if meta.get("outputs") and not paths.outputs.exists():
        raise _Damaged(paths.outputs, "is missing")
    for name, why in failed.items():
        result.skipped[_shown_name(name)] = (f"cannot be loaded here: {why}; %remote_fetch "
                                             f"{result.task_id} loads it again once that is "
                                             "fixed")
    result.mutated = {n[len(IN_PLACE):]: values.pop(n) for n in list(values)
                      if n.startswith(IN_PLACE)}
    raised = values.pop(EXCEPTION, None)
    result.settings = values.pop(AMBIENT, {})
    for name, module in meta.get("imports", {}).items():
        try:
            values[name] = importlib.import_module(module)
        except ImportError:
            result.skipped[name] = f"module {module} is not installed in this kernel"
    result.values = values
    result.deleted = meta.get("deleted", [])
    result.written = meta.get("written", [])
    result.skipped.update({_shown_name(n): why for n, why in meta.get("skipped", {}).items()})
    return raised


def _shown_name(name: str) -> str:
    """How an entry of the outputs is named to the user (not by our internal names)."""
    return "what the cell raised" if name == EXCEPTION else name.replace(IN_PLACE, "", 1)


class _Sent(Mapping[str, Any]):
    """The objects the notebook sent, by name; loaded again from the inputs file only when
    this kernel no longer holds them (it restarted since)."""

    def __init__(self, originals: Mapping[str, Any] | None, inputs: Inputs) -> None:
        self.originals = originals or {}
        self.inputs = inputs
        self.loaded: dict[str, Any] | None = None

    def __getitem__(self, name: str) -> Any:
        if name in self.originals:
            return self.originals[name]
        if self.loaded is None:
            self.loaded = {}
            path = self.inputs() if callable(self.inputs) else self.inputs
            if path is not None and path.exists():
                self.loaded = load_namespace(path)
        return self.loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.originals)

    def __len__(self) -> int:
        return len(self.originals)


def decoder(namespace: dict[str, Any] | None, originals: Mapping[str, Any] | None,
            inputs: Inputs) -> Callable[[bytes], Any]:
    """How to load a displayed object of a task: as its results are loaded (the notebook's
    classes it refers to by name, its functions' globals in `namespace`)."""
    sent = _Sent(originals, inputs)
    return lambda data: loads(data, namespace=namespace, refs=sent)


def _shown(entry: dict[str, Any], namespace: dict[str, Any] | None, sent: _Sent) -> Shown:
    if entry["kind"] == "bundle":
        return Shown(bundle=entry["data"], metadata=entry.get("metadata") or {})
    try:
        return Shown(obj=loads(entry["data"], namespace=namespace, refs=sent))
    except Exception as exc:  # noqa: BLE001 - show that it failed, keep the other results
        return Shown(bundle={"text/plain": f"<a displayed object could not be loaded here: "
                                           f"{type(exc).__name__}: {exc}>"})


def _error(paths: TaskPaths, result: TaskResult, raised: Any) -> RemoteTaskError:
    where = f"task {result.task_id} on {result.host}"
    info = read_json(paths.error)
    if not _describes_error(info):  # absent, cut short or garbled: the state's reason says it
        return TaskFailedError(f"Task {result.task_id} on {result.host} {result.state}: "
                               f"{result.reason or 'no reason recorded'}",
                               remote_type=result.state, task_id=result.task_id)
    details = {"remote_type": info["type"], "task_id": result.task_id,
               "remote_traceback": with_local_source(info.get("traceback", ""))}
    if isinstance(raised, tuple) and len(raised) == 3 and isinstance(raised[0], type):
        return rebuild_error(*raised, **details)
    original = _exception_type(info.get("module", ""), info.get("type", ""))
    return error_for(original, f"{info['message']} (raised in {where})", **details)


def _describes_error(info: Any) -> bool:
    return isinstance(info, dict) and all(isinstance(info.get(k), str)
                                          for k in ("type", "message"))


def _exception_type(module: str, qualname: str) -> type | None:
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception:  # noqa: BLE001 - an exception class unknown here: keep the base class
        return None
    return obj if isinstance(obj, type) and issubclass(obj, BaseException) else None


_FRAME = re.compile(r'  File "(?P<file>[^"]+)", line (?P<line>\d+), in ')


def with_local_source(traceback: str) -> str:
    """Fill in the source lines the host could not show, from this machine's files.

    A function from the user's own module travels by value, so the host runs it without the
    file it came from and its traceback frames name a file and line but show no code. The
    kernel usually has that file (it sent the function), so the user still sees their code.
    """
    lines = traceback.splitlines(keepends=True)
    filled: list[str] = []
    for i, line in enumerate(lines):
        filled.append(line)
        frame = _FRAME.match(line)
        shown = i + 1 < len(lines) and lines[i + 1].startswith("    ")
        if frame and not shown:
            code = linecache.getline(frame["file"], int(frame["line"])).strip()
            if code:
                filled.append(f"    {code}\n")
    return "".join(filled)
