"""Prepare: turn a cell (or a function call) and the variables it reads into a task.

The task's files are written into a fresh local directory; the task id is a content hash of
the code, the serialized inputs, the options and the host, so an identical task can be
recognised and its stored results reused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..config.checks import NAME_MAX, PATH_MAX, collect_patterns
from ..config.hosts import HostConfig, check_resources, job_resources
from ..errors import CaptureError, OptionError, RemoteMagicError, echo
from ..wire import ambient
from ..wire.serialization import AMBIENT, Pickled, pickle_namespace
from ..wire.taskdir import PREPARED_FILES, TaskPaths, write_json
from .capture import analyse_cell, identifiers
from .files import limit_bytes, plan_stage, shared_folder
from .fingerprint import fingerprint
from .paths import PREPARE_PREFIX, data_dir, sweep_prepares

SPEC_VERSION = 1
CALL_CODE = "_rm_result = _rm_fn(*_rm_args, **_rm_kwargs)\n"
# Inputs at least this large, for a host reached over the network, are not written here: the
# transport sends them from the values' own memory (a second copy of a large array on this
# disk would only cost time and room). Smaller ones travel inside the staging request.
STREAM_MIN = 8 << 20


@dataclass
class TaskOptions:
    """What the user asked for, beyond the code itself."""

    inputs: list[str] = field(default_factory=list)
    outputs: list[str] | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    rerun: bool = False
    nowait: bool = False
    files: list[str] = field(default_factory=list)  # local files/folders to stage in
    collect: list[str] = field(default_factory=list)  # globs copied back afterwards


@dataclass
class PreparedTask:
    id: str
    content_hash: str
    host: str
    local_dir: Path
    spec: dict[str, Any]
    files: list[str]
    # the user's options, checked and normalized (resources, collect patterns, name)
    options: TaskOptions = field(default_factory=TaskOptions)
    # where the cell runs and how its files come back ("cwd", or "return_files" with
    # "not_staged"; "cwd_local", "prepared_at"): the kernel needs it to load the results
    placement: dict[str, Any] = field(default_factory=dict)
    extra: list[tuple[Path, str]] = field(default_factory=list)  # (--files path, destination)
    # the objects sent, by every notebook name they were sent under: the results refer to them
    values: dict[str, Any] = field(default_factory=dict, repr=False)
    # task files not written here, sent from memory by the transport (name -> its bytes)
    streams: dict[str, Pickled] = field(default_factory=dict, repr=False)

    def release_streams(self) -> None:
        """Once staged (or given up): the sent values' memory is theirs again."""
        for stream in self.streams.values():
            stream.release()
        self.streams = {}

    def discard(self) -> None:
        self.release_streams()
        shutil.rmtree(self.local_dir, ignore_errors=True)


def prepare_cell(code: str, namespace: Mapping[str, Any], host: HostConfig,
                 options: TaskOptions, hidden: Iterable[str] = (),
                 figures: dict[str, Any] | None = None) -> PreparedTask:
    """Analyse the cell, serialize what it reads from `namespace`, write the task files.

    `figures`: how the notebook shows matplotlib figures ({"formats": [...], "kwargs": {}}).
    """
    cell = analyse(code, namespace, options, hidden)
    return _write_task(code, cell.values, cell.outputs, cell.deletes, cell.last_expression,
                       host, options, namespace=namespace, aliases=cell.others,
                       stream=not host.is_local,
                       figures=figures)


@dataclass
class CellReads:
    """What a cell takes from the notebook and gives back."""

    values: dict[str, Any]  # the variables it reads, by name (and the ambient settings)
    outputs: list[str]  # the names that come back
    deletes: list[str]
    last_expression: bool
    others: dict[str, Any]  # the notebook's other names, offered as aliases of what is sent
    binds: list[str]  # every name the cell assigns


def analyse(code: str, namespace: Mapping[str, Any], options: TaskOptions,
            hidden: Iterable[str] = ()) -> CellReads:
    """The names the cell reads from `namespace` (leaving out `hidden` ones) and binds."""
    names = analyse_cell(code)
    if "get_ipython" in names.reads:
        raise CaptureError(
            "This cell uses IPython syntax (a %magic or !shell line), which a remote task "
            "cannot run. Use plain Python there (e.g. subprocess.run for shell commands).")
    missing = [n for n in options.inputs if n not in namespace]
    if missing:
        raise RemoteMagicError(
            f"-i names {', '.join(missing)}, but the notebook has no such variable.")
    hidden = set(hidden)
    reads = set(names.reads)
    for variable in names.evaluated:  # df.query(expr) with expr a string of the notebook
        if isinstance(namespace.get(variable), str):
            reads.update(identifiers(namespace[variable]))
    wanted = sorted({n for n in reads if n in namespace and n not in hidden}
                    | set(options.inputs))
    values = {n: namespace[n] for n in wanted}
    outputs = options.outputs
    if outputs is None:
        outputs = [n for n in names.binds if not n.startswith("_")]
    others = {n: v for n, v in namespace.items()
              if n not in values and n not in hidden and not n.startswith("_")
              and not isinstance(v, types.ModuleType)}
    values[AMBIENT] = ambient.seal(ambient.capture())
    return CellReads(values, list(outputs), sorted(names.deletes), names.last_expression,
                     others, sorted(names.binds))


def prepare_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 host: HostConfig, options: TaskOptions) -> PreparedTask:
    """A function call, run through the same path as a cell."""
    values = {"_rm_fn": fn, "_rm_args": args, "_rm_kwargs": kwargs}
    if options.name is None:
        options = replace(options, name=getattr(fn, "__name__", None))
    return _write_task(CALL_CODE, values, ["_rm_result"], [], False, host, options,
                       stream=not host.is_local)


@functools.lru_cache(maxsize=1)
def _installed_roots() -> tuple[str, ...]:
    """Where installed code lives: modules elsewhere are the user's own files (fixed for the
    life of the interpreter, so found once)."""
    import site
    import sysconfig

    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    return tuple(os.path.realpath(r) + os.sep for r in roots)


def send_local_modules_by_value(values: Iterable[Any]) -> None:
    """Functions and classes from the user's own files travel with their code.

    A host cannot import `helpers.py` from beside the notebook, so cloudpickle is told to
    pickle such modules by value rather than by name. Installed packages stay by name.
    """
    import cloudpickle

    roots = _installed_roots()
    for value in values:
        for owner in (value, type(value)):
            name = getattr(owner, "__module__", None)
            module = sys.modules.get(name) if isinstance(name, str) else None
            path = getattr(module, "__file__", None)
            if (module is None or not path or name == "__main__"
                    or name.split(".")[0] == "remote_magic"):
                continue
            if not os.path.realpath(path).startswith(roots):
                cloudpickle.register_pickle_by_value(module)


def plan_files(specs: list[str], host: HostConfig, cwd: Path) -> list[tuple[Path, str]]:
    """Where each `--files` entry goes: a relative path keeps its place under the task's
    working directory; an absolute one goes where the host's `paths` mapping puts it.

    Every entry is looked at here, before anything is written: a name that cannot be a file,
    or a file that is not there or cannot be read, is one clear message now rather than a
    failed transfer once the task is half-staged.
    """
    plan: list[tuple[Path, str]] = []
    for spec in specs:
        local, full = _local_file(spec, cwd)
        if local.is_absolute():
            destination = _mapped(local, host)
        else:
            relative = Path(os.path.normpath(local))
            if relative.parts and relative.parts[0] == "..":
                raise OptionError(f"--files {echo(spec)}: points outside the notebook's folder. "
                                  "Use a path below it, or an absolute path with a 'paths:' "
                                  f"mapping for host '{host.name}'.")
            destination = "work" if relative == Path(".") else f"work/{relative.as_posix()}"
        files = [full] if full.is_file() else sorted(p for p in full.rglob("*") if p.is_file())
        unreadable = [p for p in files if not os.access(p, os.R_OK)]
        if unreadable:
            raise OptionError(f"--files {echo(spec)}: cannot read "
                              f"{echo(str(unreadable[0]))} (permission denied).")
        for file in files:
            suffix = "" if file == full else "/" + file.relative_to(full).as_posix()
            plan.append((file, destination + suffix))
    return plan


def _local_file(spec: str, cwd: Path) -> tuple[Path, Path]:
    """The `--files` entry as given (with ~ expanded) and where it is, refused unless it
    names an existing regular file or folder."""
    if not spec or "\0" in spec:  # "" would be Path("."): the whole folder
        raise OptionError(f"--files {echo(spec)}: not a file name (it is empty, or holds a NUL "
                          "character).")
    encoded = os.fsencode(spec)
    if len(encoded) > PATH_MAX or any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        raise OptionError(f"--files {echo(spec)}: no file can have a name that long (at most "
                          f"{NAME_MAX} bytes a name, {PATH_MAX} a path).")
    local = Path(os.path.expanduser(spec))
    full = local if local.is_absolute() else cwd / local
    try:
        mode = full.stat().st_mode
    except FileNotFoundError:
        raise OptionError(f"--files {echo(spec)}: no such file or folder (looked in "
                          f"{echo(str(full), 120)}).") from None
    except OSError as exc:  # not a folder on the way, a loop of links, no permission
        raise OptionError(f"--files {echo(spec)}: cannot be used ({exc.strerror}).") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise OptionError(f"--files {echo(spec)}: not a regular file or folder (a pipe, socket "
                          "or device cannot be copied to a host).")
    return local, full


def _mapped(local: Path, host: HostConfig) -> str:
    for prefix in sorted(host.paths, key=len, reverse=True):
        try:
            rest = local.relative_to(prefix)
        except ValueError:
            continue
        remote = host.paths[prefix].rstrip("/")
        return remote if rest == Path(".") else f"{remote}/{rest.as_posix()}"
    raise OptionError(
        f"--files {echo(str(local))}: an absolute path must fall under a 'paths:' mapping of host "
        f"'{host.name}' (local prefix: remote prefix), or be given relative to the "
        "notebook's folder.")


@functools.cache
def _sweep_once(root: Path) -> None:
    """What kernels killed while preparing left in `root`, removed once per process: a
    leftover is as large as its task's inputs, and nothing else would ever remove it."""
    sweep_prepares(root)


def _write_task(code: str, values: dict[str, Any], outputs: list[str], deletes: list[str],
                last_expression: bool, host: HostConfig, options: TaskOptions,
                namespace: Mapping[str, Any] | None = None,
                aliases: Mapping[str, Any] | None = None,
                figures: dict[str, Any] | None = None,
                track_changes: bool = True, stream: bool = False) -> PreparedTask:
    """Write the task's files. With the notebook's `namespace`, the task works on it as a cell
    would: its functions see the task's globals, and (with `track_changes`) the inputs it
    changes come back. With `stream`, inputs of STREAM_MIN bytes or more are kept in memory
    for the transport to send (PreparedTask.streams) instead of written."""
    options = replace(options, resources=check_resources(options.resources),
                      collect=collect_patterns(options.collect))
    job_resources(host, options.resources)  # what the host's scheduler would refuse
    collect = options.collect
    cwd = Path.cwd()
    extra = plan_files(options.files, host, cwd)
    place: dict[str, Any] = {}
    used: list[tuple[str, int, int]] = []  # files under cwd the cell names: part of its id
    if namespace is not None:
        shared = shared_folder(host, cwd)
        named = {n: v for n, v in values.items() if n.isidentifier()}
        auto = plan_stage(code, named, cwd, limit_bytes(host) if shared is None else 1 << 62)
        used = [(d, *_stat(p)) for p, d in auto.files]
        if shared is not None:  # the cell runs in the notebook's folder: nothing to stage
            extra = [(p, d) for p, d in extra if not d.startswith("work/")]
            place = {"cwd": shared}
        else:
            taken = {d for _, d in extra}
            extra += [(p, d) for p, d in auto.files if d not in taken]
            place = {"return_files": True, "not_staged": auto.left}
        place.update(cwd_local=str(cwd), prepared_at=time.time())
    imports = {n: v.__name__ for n, v in values.items() if isinstance(v, types.ModuleType)}
    values = {n: v for n, v in values.items() if n not in imports}
    send_local_modules_by_value(values.values())
    root = data_dir() / "tasks"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    _sweep_once(root)
    staging = Path(tempfile.mkdtemp(prefix=PREPARE_PREFIX, dir=root))
    streams: dict[str, Pickled] = {}
    try:
        pickled = pickle_namespace(
            values, namespace=namespace if isinstance(namespace, dict) else None,
            aliases=aliases)
        pickled.digest = inputs_digest = fingerprint(pickled.chunks(), pickled.size)
        if stream and pickled.size >= STREAM_MIN:
            streams[TaskPaths(staging).inputs.name] = pickled
        else:
            try:
                pickled.write(TaskPaths(staging).inputs, digest=False)
            finally:
                pickled.release()
        if aliases:
            values = {**values, **{n: aliases[n] for n in pickled.aliased}}
        python = "{}.{}".format(*sys.version_info[:2])
        staged = [(str(p), d, p.stat().st_size, p.stat().st_mtime_ns) for p, d in extra]
        content = {"code": code, "imports": imports, "inputs": inputs_digest,
                   "outputs": outputs, "deletes": deletes, "resources": options.resources,
                   "host": host.name, "python": python, "version": SPEC_VERSION,
                   "files": staged, "collect": collect, "used": used,
                   "cwd": place.get("cwd")}
        content_hash = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
        task_id = content_hash[:16]
        if options.rerun:  # a rerun is a new task: the earlier one's results stay
            salt = f"{content_hash}:{time.time_ns()}:{os.getpid()}".encode()
            task_id = hashlib.sha256(salt).hexdigest()[:16]
        spec = {
            "version": SPEC_VERSION, "id": task_id, "code": code,
            "filename": f"<remote-cell {task_id[:8]}>", "last_expression": last_expression,
            "inputs": sorted(values), "imports": imports, "outputs": outputs,
            "deletes": deletes, "resources": options.resources, "name": options.name,
            "python": python, "created": time.time(), "collect": collect,
            "files": [d for _, d in extra],
            "track_changes": namespace is not None and track_changes,
            "figures": _json_or_none(figures), **place,
        }
        write_json(TaskPaths(staging).spec, spec)
    except BaseException:
        for pickled in streams.values():
            pickled.release()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PreparedTask(id=task_id, content_hash=content_hash, host=host.name,
                        local_dir=staging, spec=spec,
                        files=[n for n in PREPARED_FILES if n not in streams],
                        options=options, placement=place, extra=extra, values=values,
                        streams=streams)


def _stat(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


def _json_or_none(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return value


def commit(prepared: PreparedTask) -> None:
    """Give the prepared files their final place, named by the task id."""
    final = prepared.local_dir.parent / prepared.id
    if final.exists():
        shutil.rmtree(final)
    os.replace(prepared.local_dir, final)
    prepared.local_dir = final
