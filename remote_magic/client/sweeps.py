"""Sweeps: one cell over many values, each value an element task of its own.

What the elements share (the cell, and the notebook variables it reads) is serialized once,
into the sweep's *shared inputs*, and sent to a host once; each element adds only its own
values. An element is an ordinary task (own directory, output, state, id): it can be followed,
fetched, killed and purged on its own, and an element identical to one that completed before
(same cell, same shared inputs, same value) is not run again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config.hosts import HostConfig
from ..errors import OptionError, SweepFailedError, clipped
from ..wire.serialization import dump_namespace
from ..wire.taskdir import PREPARED_FILES, TaskPaths
from .paths import PREPARE_PREFIX, data_dir
from .prepare import CALL_CODE, PreparedTask, TaskOptions, _write_task, analyse, commit

MAX_ELEMENTS = 100_000  # a sweep larger than this is almost surely a mistake in --map
INLINE_BATCH = 4 * 1024 * 1024  # bytes of element files sent in one staging request


@dataclass
class PreparedSweep:
    id: str
    host: str
    base: PreparedTask  # what the elements share: its inputs file is the shared blob
    shared: str  # the shared blob's sha256: its name on the host
    elements: list[PreparedTask]
    names: list[str]  # the names bound per element
    labels: list[str]  # each element's values as shown ("seed=3")
    bindings: list[dict[str, Any]] = field(repr=False)
    outputs: list[str] = field(default_factory=list)  # the names that come back, as lists
    keyed: bool = False  # they come back as dicts keyed by the values (kept for a later fetch)

    @property
    def options(self) -> TaskOptions:
        return self.base.options

    def discard(self) -> None:
        for prepared in [self.base, *self.elements]:
            prepared.discard()


def expand(values: Mapping[str, Iterable[Any]], zipped: bool = False) -> list[dict[str, Any]]:
    """The element bindings: every combination of the values (a product, the first name
    varying slowest, as nested loops in the order given), or with `zipped` the values taken
    side by side (all of the same length)."""
    if not values:
        raise OptionError("--map: give at least one NAME=EXPR")
    lists: dict[str, list[Any]] = {}
    for name, iterable in values.items():
        if not name.isidentifier():
            raise OptionError(f"--map {clipped(name, 40)!r}: not a Python name")
        if isinstance(iterable, (str, bytes, Mapping)) or not hasattr(iterable, "__iter__"):
            kind = type(iterable).__name__
            raise OptionError(f"--map {name}=...: the expression gives a {kind}, not a "
                              "sequence of values; write e.g. range(10), [0.1, 0.01], or "
                              f"list(...) around it" + (
                                  " (a string would be swept letter by letter: put it in a "
                                  "list)" if isinstance(iterable, (str, bytes)) else ""))
        lists[name] = list(itertools.islice(iterable, MAX_ELEMENTS + 1))
        if not lists[name]:
            raise OptionError(f"--map {name}=...: the expression gives no values: a sweep "
                              "needs at least one")
    if zipped:
        lengths = {n: len(v) for n, v in lists.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{n}: {k}" for n, k in lengths.items())
            raise OptionError(f"--zip pairs the values side by side, so each --map needs as "
                              f"many: here {shown}")
        combos: Iterable[tuple[Any, ...]] = zip(*lists.values())
        count = next(iter(lengths.values()))
    else:
        count = 1
        for v in lists.values():
            count *= len(v)
        combos = itertools.product(*lists.values())
    if count > MAX_ELEMENTS:
        raise OptionError(f"--map gives {count:,} elements, over the limit of "
                          f"{MAX_ELEMENTS:,}: sweep fewer values, or split the sweep")
    names = list(lists)
    return [dict(zip(names, combo)) for combo in combos]


def label(binding: Mapping[str, Any]) -> str:
    return ", ".join(f"{n}={clipped(_short_repr(v), 40)}" for n, v in binding.items())


def _short_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - a label is never worth an error
        return f"<{type(value).__name__}>"


def prepare_sweep(code: str, namespace: Mapping[str, Any], host: HostConfig,
                  options: TaskOptions, bindings: list[dict[str, Any]],
                  hidden: Iterable[str] = (),
                  figures: dict[str, Any] | None = None) -> PreparedSweep:
    """Write the shared part once and one small task per binding.

    An element's inputs are its own values; the runner reads the shared inputs first. Inputs
    an element changes in place do not come back (each element works on its own copy, so
    there is no single "changed" value to bring back): names it assigns do, as lists."""
    names = list(bindings[0])
    cell = analyse(code, namespace, options, [*hidden, *names])
    clash = sorted(set(names) & set(cell.outputs))
    if clash:
        raise OptionError(f"--map {', '.join(clash)}: the cell assigns "
                          f"{'this name' if len(clash) == 1 else 'these names'} itself, and "
                          "assigned names come back as lists of every element's value: "
                          "rename the swept variable or the one the cell assigns")
    base = _write_task(code, cell.values, cell.outputs, cell.deletes, cell.last_expression,
                       host, options, namespace=namespace, aliases=cell.others,
                       figures=figures, track_changes=False)
    return _sweep_of(base, bindings, cell.outputs, namespace)


def prepare_call_sweep(fn: Any, calls: list[tuple[Any, ...]], host: HostConfig,
                       options: TaskOptions) -> PreparedSweep:
    """`fn(*args)` for each `args` of `calls`, as the elements of one sweep (what
    `RemoteExecutor.map` sends to a batch host): the function travels once."""
    if options.name is None:
        options = replace(options, name=getattr(fn, "__name__", None))
    base = _write_task(CALL_CODE, {"_rm_fn": fn, "_rm_kwargs": {}}, ["_rm_result"], [], False,
                       host, options, track_changes=False)
    return _sweep_of(base, [{"_rm_args": tuple(args)} for args in calls], ["_rm_result"], {})


def _sweep_of(base: PreparedTask, bindings: list[dict[str, Any]], outputs: list[str],
              namespace: Mapping[str, Any]) -> PreparedSweep:
    """The elements of a sweep whose shared part `base` is written."""
    try:
        shared = _file_sha256(TaskPaths(base.local_dir).inputs)
        elements = _write_elements(base, shared, bindings, namespace)
    except BaseException:
        base.discard()
        raise
    digest = hashlib.sha256(base.content_hash.encode())
    for element in elements:
        digest.update(element.id.encode())
    return PreparedSweep(digest.hexdigest()[:16], base.host, base, shared, elements,
                         list(bindings[0]), [label(b) for b in bindings], bindings, outputs)


def _write_elements(base: PreparedTask, shared: str, bindings: list[dict[str, Any]],
                    namespace: Mapping[str, Any]) -> list[PreparedTask]:
    """One small task directory per binding, all in one staging folder until accepted."""
    root = data_dir() / "tasks"
    folder = Path(tempfile.mkdtemp(prefix=PREPARE_PREFIX, dir=root))
    elements = []
    salt = os.urandom(8).hex() if base.options.rerun else ""
    own = namespace if isinstance(namespace, dict) else None  # functions bound to it
    try:
        for index, binding in enumerate(bindings):
            local = folder / str(index)
            local.mkdir(mode=0o700)
            dumped = dump_namespace(binding, TaskPaths(local).inputs, namespace=own)
            content = json.dumps({"sweep_of": base.content_hash, "shared": shared,
                                  "values": dumped.sha256}, sort_keys=True)
            content_hash = hashlib.sha256(content.encode()).hexdigest()
            task_id = hashlib.sha256((content_hash + salt).encode()).hexdigest()[:16] \
                if salt else content_hash[:16]
            spec = {**base.spec, "id": task_id, "filename": f"<remote-cell {task_id[:8]}>",
                    "inputs": sorted(binding), "shared": shared,
                    "sweep": {"index": index}}
            (TaskPaths(local).spec).write_text(json.dumps(spec, sort_keys=True))
            elements.append(replace(base, id=task_id, content_hash=content_hash,
                                    local_dir=local, spec=spec, files=list(PREPARED_FILES),
                                    values=binding))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return elements


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def commit_sweep(sweep: PreparedSweep, keep: list[PreparedTask]) -> None:
    """Give the prepared files their final places: the shared part under the sweep's id (a
    retry sends it again from there, should the host have lost it), each kept element under
    its task id; the elements not kept (reused or attached) are removed."""
    base = sweep.base
    base.id = sweep.id
    commit(base)
    folders = {e.local_dir.parent for e in sweep.elements}
    root = base.local_dir.parent
    for element in keep:
        final = root / element.id
        if final.exists():
            shutil.rmtree(final)
        os.replace(element.local_dir, final)
        element.local_dir = final
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def check_stageable(sweep: PreparedSweep) -> None:
    """Refuse, before anything is recorded, what a sweep cannot stage."""
    outside = [d for _, d in sweep.base.extra if d.startswith(("/", "~"))]
    if outside:
        raise OptionError(f"--map with --files going outside the task's folder ({outside[0]}) "
                          "is not supported: a sweep stages files into each element's own "
                          "folder; give --files a path relative to the notebook's folder")


def shared_files(sweep: PreparedSweep) -> list[tuple[Path, dict[str, Any]]]:
    """What every element of the sweep gets alike, sent to a host once: the shared inputs
    (linked into each element's directory: read, never changed), and the files staged into
    the cell's working directory (copied: an element may change its copy)."""
    check_stageable(sweep)
    found = [(TaskPaths(sweep.base.local_dir).inputs,
              {"sha256": sweep.shared, "name": TaskPaths(".").shared.name, "copy": False})]
    for local, destination in sweep.base.extra:
        found.append((local, {"sha256": _file_sha256(local), "name": destination,
                              "copy": True}))
    return found


def stage_elements(transport: Any, elements: list[PreparedTask],
                   shared: list[tuple[Path, dict[str, Any]]],
                   start: bool) -> dict[str, dict[str, Any]]:
    """Stage the elements on the host (the shared files first, those the host lacks), small
    ones many to a request; with `start`, each is started as it is staged. Answers per
    element, as the agent's `stage` answers: {"root", "existing"?, "started"?}."""
    agent = transport.agent()
    entries = [entry for _, entry in shared]
    missing = set(agent.request("shared_has", files=sorted({e["sha256"] for e in entries})))
    for local, entry in shared:
        if entry["sha256"] in missing:
            transport.share(local, entry["sha256"])
            missing.discard(entry["sha256"])
    answers: dict[str, dict[str, Any]] = {}
    batch: list[tuple[PreparedTask, list[dict[str, Any]], bytes]] = []

    def send() -> None:
        if batch:
            tasks = [{"task": e.id, "files": files} for e, files, _ in batch]
            payload = b"".join(data for _, _, data in batch)
            answers.update(agent.call("stage_many", {"tasks": tasks, "shared": entries,
                                                     "start": start}, payload,
                                      timeout=300)[0])
            batch.clear()

    size = 0
    for element in elements:
        files, data = _inline(element.local_dir, element.files)
        if size + len(data) > INLINE_BATCH:
            send()
            size = 0
        batch.append((element, files, data))
        size += len(data)
    send()
    return answers


def _inline(source: Path, names: list[str]) -> tuple[list[dict[str, Any]], bytes]:
    data = [(source / n).read_bytes() for n in names]
    files = [{"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
             for n, d in zip(names, data)]
    return files, b"".join(data)


@dataclass
class SweepResult:
    """What a sweep's elements left, gathered by name in the order of the values."""

    sweep_id: str
    labels: list[str]
    states: list[str]  # each element's state ("purged" when its task is gone)
    values: dict[str, Any] = field(default_factory=dict)  # name -> list (or dict by value)
    errors: dict[int, BaseException] = field(default_factory=dict)  # index -> what it raised
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for state in self.states:
            found[state] = found.get(state, 0) + 1
        return found

    def summary(self) -> str:
        counts = self.counts()
        order = ["completed", "failed", "cancelled", "timed_out", "lost", "purged"]
        parts = [f"{counts[s]} {s.replace('_', ' ')}" for s in
                 [*order, *sorted(set(counts) - set(order))] if counts.get(s)]
        return f"sweep {self.sweep_id}: {len(self.states)} elements, " + ", ".join(parts)

    def apply(self, namespace: dict[str, Any]) -> list[str]:
        namespace.update(self.values)
        return sorted(self.values)

    def error(self, limit: int = 8) -> SweepFailedError | None:
        """The error to raise for the elements that did not complete, naming them (by index,
        with what they raised), or None when all completed."""
        if not self.errors:
            return None
        listed = [f"{i} ({self.labels[i]}): {_said(e)}" for i, e in
                  sorted(self.errors.items())[:limit]]
        more = len(self.errors) - len(listed)
        first = min(self.errors)
        message = (f"{len(self.errors)} of {len(self.states)} elements of sweep {self.sweep_id} "
                   "did not complete; the completed ones are loaded (the others' places hold "
                   "their exceptions).\n  " + "\n  ".join(listed)
                   + (f"\n  ... and {more} more" if more else "")
                   + f"\nSee one with %remote_log {self.sweep_id} {first} --stderr; run the "
                   f"failed ones again with %remote_retry {self.sweep_id}; --partial loads "
                   "a sweep's results without raising.")
        return SweepFailedError(message, dict(self.errors))


def _said(exc: BaseException) -> str:
    kind = getattr(exc, "remote_type", None) or type(exc).__name__
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return clipped(f"{kind}: {first}" if first and not first.startswith(kind) else
                   first or kind, 160)


def gather(sweep_id: str, labels: list[str], outputs: list[str],
           elements: list[tuple[str, Any]], keys: list[Any] | None = None) -> SweepResult:
    """The sweep's results from its elements' (state, TaskResult or None) in order: each
    output name as a list (a dict by `keys`, when given), an element that failed holding
    its exception and one that did not assign the name holding None."""
    result = SweepResult(sweep_id, labels, [state for state, _ in elements])
    columns: dict[str, list[Any]] = {name: [] for name in outputs}
    for index, (state, task) in enumerate(elements):
        error = getattr(task, "error", None) if task is not None else None
        if error is None and state not in ("completed",) and state in _ENDED:
            error = RuntimeError(f"element {index} {state}")
        if error is not None:
            result.errors[index] = error
        for name in outputs:
            if error is not None:
                columns[name].append(error)
            else:
                columns[name].append(task.values.get(name) if task is not None else None)
    modules = {name: _module(column) for name, column in columns.items()}
    for name, module in modules.items():
        if module is not None:  # `import x` binds the same module in every element: as here
            result.values[name] = module
    for name, column in columns.items():
        if modules[name] is None:
            result.values[name] = dict(zip(keys, column)) if keys is not None else column
    return result


def _module(column: list[Any]) -> types.ModuleType | None:
    found = [v for v in column if not isinstance(v, BaseException) and v is not None]
    if found and all(isinstance(v, types.ModuleType) and v is found[0] for v in found):
        return found[0]
    return None


_ENDED = {"failed", "cancelled", "timed_out", "lost", "purged"}


@dataclass
class SweepFollow:
    """What loading a sweep's results into the notebook needs, kept while it runs."""

    sweep: Any  # the SweepRecord
    originals: dict[str, Any] = field(repr=False)  # the objects all elements were sent
    bindings: list[dict[str, Any]] | None = field(default=None, repr=False)
    keyed: bool = False
    partial: bool = False


def check_keys(bindings: list[dict[str, Any]]) -> None:
    """Keyed results need values that can be dict keys, and no two alike."""
    keys = []
    for binding in bindings:
        values = tuple(binding.values())
        key = values[0] if len(values) == 1 else values
        try:
            hash(key)
        except TypeError:
            raise OptionError(f"--keyed: the value {clipped(_short_repr(key), 60)} cannot be a "
                              "dict key (it is not hashable); leave out --keyed to get lists"
                              ) from None
        keys.append(key)
    if len(set(keys)) != len(keys):
        raise OptionError("--keyed: some values repeat, so they cannot key the results; leave "
                          "out --keyed to get lists")
