"""Runs one task on the host: its supervisor, and the process that executes the cell.

`python -m remote_magic.host.runner TASKDIR` supervises and runs a task; the agent calls
`supervise` directly in a forked child instead, which saves a Python start-up per task.

The supervisor forks the runner into its own process group, touches the heartbeat while it
runs, writes the exit-code file whatever happens to it, and settles the final state when the
runner died without writing one (killed, out of memory, segfault). The runner itself loads the
inputs, executes the cell, and writes outputs, displays, the error and the state.

Imports stay light: numpy, IPython or matplotlib are imported only by the cell itself.
"""

from __future__ import annotations
import __future__

import ast
import builtins
import functools
import importlib
import linecache
import operator
import os
import signal
import stat
import sys
import threading
import traceback
import types
from pathlib import Path
from typing import Any, Callable

from ..wire import ambient
from ..wire.serialization import AMBIENT, EXCEPTION, IN_PLACE, dump_namespace, load_namespace
from ..wire.states import FINAL_STATES, State
from ..wire.taskdir import (
    HEARTBEAT_INTERVAL,
    TaskPaths,
    read_json,
    read_state,
    set_state,
    write_atomic,
    write_json,
)
from . import displays
from .changes import InputWatch, immutable
from .displays import DisplayRecorder
from .importhooks import when_imported
from .proctitle import set_name

CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect into every task
_FUTURE_FLAGS = functools.reduce(operator.or_, (getattr(__future__, name).compiler_flag
                                                for name in __future__.all_feature_names))
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL when a task is cancelled


# ---------------------------------------------------------------- supervisor

def supervise(root: str) -> int:
    """Run the task in a child process and make sure its outcome is recorded."""
    paths = TaskPaths(root)
    set_name(f"rm-watch-{paths.root.name[:6]}")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        become_runner(paths)
    return watch(paths, pid)


def become_runner(paths: TaskPaths, on_end: Callable[[list[str]], None] | None = None) -> None:
    """In the runner's process (its own process group): run the task, then exit."""
    code = 1
    try:
        set_name(f"rm-task-{paths.root.name[:7]}")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _redirect(os.open(paths.stdout, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                  os.open(paths.stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        code = run_task(str(paths.root), on_end)
    except BaseException:
        traceback.print_exc()
    finally:
        _flush_std()
        os._exit(code)


def watch(paths: TaskPaths, pid: int) -> int:
    """In the supervisor: wait for the runner `pid`, beating the heartbeat, and record its
    outcome whatever it was. A SIGTERM (cancel) stops the runner's whole process group."""

    def on_term(signum: int, frame: Any) -> None:
        signal_group(pid, signal.SIGTERM)
        timer = threading.Timer(KILL_GRACE, signal_group, (pid, signal.SIGKILL))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_term)
    write_json(paths.pids, {"supervisor": os.getpid(), "runner": pid})
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(paths, stop), daemon=True)
    beat.start()
    _, status = os.waitpid(pid, 0)
    stop.set()
    code = os.waitstatus_to_exitcode(status)
    write_atomic(paths.exitcode, f"{code}\n")
    settle(paths, code)
    return 0 if code >= 0 else 128 - code


def settle(paths: TaskPaths, code: int | None) -> dict[str, Any]:
    """Give a task whose process ended a final state if the runner did not write one."""
    record = read_state(paths)
    if record["state"] in FINAL_STATES:
        return record
    if paths.cancel.exists():
        return set_state(paths, State.CANCELLED, "cancelled by the user")
    if code is None:
        reason = "the task's process ended without recording an outcome"
    elif code < 0:
        reason = f"killed by signal {_signal_name(-code)}"
    else:
        reason = f"the runner exited with code {code} without recording a result"
    return set_state(paths, State.FAILED, reason, exitcode=code)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def signal_group(pgid: int, signum: int) -> None:
    """Signal process group `pgid`, if it is still there."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _heartbeat(paths: TaskPaths, stop: threading.Event) -> None:
    """Beats from the first interval on: until then the running state's time stands for the
    first beat (batchops.silence), and a short task creates no file for it."""
    while not stop.wait(HEARTBEAT_INTERVAL):
        try:
            paths.heartbeat.touch()
        except OSError:
            pass


def _redirect(out: int, err: int) -> None:
    """Point fds 0-2 at /dev/null and the task's output files, with line-flushed streams."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in (null, out, err):
        if fd > 2:
            os.close(fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace",
                      closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace",
                      closefd=False)


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream must not mask the exit code
            pass


# ---------------------------------------------------------------- runner

def run_task(root: str, on_end: Callable[[list[str]], None] | None = None) -> int:
    """Execute the cell of the task in `root`; 0 when it completed, 1 when it failed.

    `on_end` hears that the outcome is recorded, with the modules the task imported: a warm
    runner tells the agent at once (not after this process has exited) and reports them."""
    paths = TaskPaths(root)
    known = set(sys.modules)
    spec = read_json(paths.spec)
    set_state(paths, State.RUNNING, pid=os.getpid())
    os.chdir(paths.work)
    before: dict[str, tuple[int, int]] | None = None
    os.environ["REMOTE_MAGIC_TASK_DIR"] = str(paths.root)
    # figures show as the notebook's inline backend shows them (plt.show included)
    os.environ["MPLBACKEND"] = "module://remote_magic.host.mpl_backend"
    source, filename = spec["code"], spec["filename"]
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)

    recorder = displays.current = DisplayRecorder(paths.events, spec.get("figures"))
    when_imported("IPython.core.display_functions", recorder.patch_ipython)
    when_imported("tqdm.std", _report_tqdm)
    # The cell's namespace is the dict of a `__main__` module without a file, as in a
    # notebook: libraries that ask whether they run interactively (pandas' width for
    # printing frames) see what they see there, and `import __main__` finds the cell's names.
    main = sys.modules["__main__"] = types.ModuleType("__main__")
    ns: dict[str, Any] = main.__dict__
    ns.update(__builtins__=builtins, display=recorder.display)
    error: dict[str, Any] | None = None
    sent: dict[str, Any] = {}
    watch: InputWatch | None = None
    settings: ambient.Tracker | None = None
    raised: BaseException | None = None
    try:
        _enter_folder(spec.get("cwd"))
        if spec.get("return_files"):
            before = _listing(paths.work)
        for name, module in spec.get("imports", {}).items():
            ns[name] = importlib.import_module(module)
        own = dict(ns)
        loaded = load_namespace(paths.shared, namespace=ns) if spec.get("shared") else {}
        if spec.get("inputs"):  # a sweep element's own values come last: they win
            loaded.update(load_namespace(paths.inputs, namespace=ns))
        if spec.get("track_changes"):
            settings = ambient.Tracker(loaded.pop(AMBIENT, {}), when_imported)
        ns.update(loaded)
        # Everything the notebook sent: the inputs, other names for the same objects, and the
        # globals of functions it sent.
        sent = {n: v for n, v in ns.items()
                if (n not in own or own[n] is not v) and not recorder.ours(v)}
        recorder.namespace = ns
        recorder.classes = {id(v): n for n, v in sent.items() if isinstance(v, type)}
        if spec.get("track_changes"):
            watch = InputWatch(sent, str(paths.inputs), ns)
        body, last = _compile(source, filename, spec.get("last_expression", False))
        for statement in body:
            _run(statement, ns)
        if last is not None:
            value = _run(last, ns)
            if value is not None:
                recorder.result = recorder.entry(value)
    except BaseException as exc:  # noqa: BLE001 - everything the cell raises is reported
        error = _describe_error(exc)
        raised = exc
    recorder.show_figures(at_end=True)
    recorder.unpatch()
    _write_outputs(paths, spec, ns, sent, watch, recorder, raised=raised, settings=settings,
                   written=_written(paths.work, before) if before is not None else [])
    if recorder.entries or recorder.result is not None:  # no file is no display
        dump_namespace({"displays": recorder.entries, "result": recorder.result},
                       paths.displays, on_error="skip")
    _flush_std()
    if error is not None:
        write_json(paths.error, error)
        set_state(paths, State.FAILED, f"{error['type']}: {error['message']}"[:500])
    else:
        set_state(paths, State.COMPLETED)
    if on_end is not None:
        on_end([n for n in sys.modules if n not in known])
    return 0 if error is None else 1


def _write_outputs(paths: TaskPaths, spec: dict[str, Any], ns: dict[str, Any],
                   sent: dict[str, Any], watch: InputWatch | None, recorder: DisplayRecorder,
                   raised: BaseException | None, settings: ambient.Tracker | None,
                   written: list[dict[str, Any]]) -> None:
    """What goes back: names the cell bound to new objects, and inputs changed in place.

    A name still bound to the object the notebook sent needs no new binding; if that object
    changed, its new content goes back under IN_PLACE + name, and the kernel updates its own
    object with it. Objects the notebook sent travel back as references to its own objects.
    """
    bound = [n for n in spec.get("outputs", []) if n in ns and recorder.original(ns[n]) is not None
             and (n not in sent or ns[n] is not sent[n])]
    imports = {n: ns[n].__name__ for n in bound if isinstance(ns[n], types.ModuleType)}
    values = {n: recorder.original(ns[n]) for n in bound if n not in imports}
    mutated = watch.changed(sent) if watch is not None else []
    values.update({IN_PLACE + n: sent[n] for n in mutated})
    if raised is not None:
        values[EXCEPTION] = _exception_state(raised)
    changed_settings = settings.changed() if settings is not None else {}
    if changed_settings:
        values[AMBIENT] = changed_settings
    refs = {id(v): n for n, v in sent.items() if not immutable(v)}
    dumped = dump_namespace(values, paths.outputs, on_error="skip", namespace=ns,
                            send_globals=False, refs=refs, digest=False)  # nobody needs it
    deleted = [n for n in spec.get("deletes", []) if n not in ns]
    write_json(paths.result, {
        "outputs": [n for n in values if n not in dumped.skipped and n.isidentifier()],
        "mutated": [n for n in mutated if IN_PLACE + n not in dumped.skipped],
        "imports": imports,
        "skipped": {n.replace(IN_PLACE, "", 1): why for n, why in dumped.skipped.items()},
        "deleted": deleted,
        "written": written,
        "check_seconds": round(watch.seconds, 6) if watch is not None else None,
    })


def _report_tqdm(std: types.ModuleType) -> None:
    """A tqdm bar reports progress too, with no change to the user's code."""
    from .reporting import progress

    update, close = std.tqdm.update, std.tqdm.close

    def reporting_update(self: Any, n: float = 1) -> Any:
        shown = update(self, n)
        progress(self.n, self.total, self.desc or "")
        return shown

    def reporting_close(self: Any) -> None:
        if not self.disable:
            progress(self.n, self.total, self.desc or "")
        close(self)

    std.tqdm.update, std.tqdm.close = reporting_update, reporting_close


def _compile(source: str, filename: str, last_expression: bool) -> tuple[list[Any], Any]:
    """The cell's statements compiled one by one, and its last expression apart (its value
    is shown), as IPython compiles a cell: the code is then the same as the notebook's (a
    whole-cell compile turns `import m` ... `m.f()` into other bytecode). `from __future__`
    statements of the cell apply to the statements after them, as in IPython; the runner's
    own (annotations) do not (dont_inherit)."""
    tree = ast.parse(source, filename)
    last = None
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    if last_expression and tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body.pop()
    body = []
    for statement in tree.body:
        code = compile(ast.Module([statement], []), filename, "exec", flags, dont_inherit=True)
        flags |= code.co_flags & _FUTURE_FLAGS
        body.append(code)
    if last is not None:
        last = compile(ast.Expression(last.value), filename, "eval", flags, dont_inherit=True)
    return body, last


def _run(code: Any, ns: dict[str, Any]) -> Any:
    """Run compiled cell code; code with a top-level `await` (IPython runs such cells) gives a
    coroutine, run here on an event loop of its own."""
    result = eval(code, ns)  # noqa: S307 - the cell's own code, on its own host
    if code.co_flags & CO_COROUTINE:
        import asyncio

        result = asyncio.run(result)
    return result


_ERROR_ATTRIBUTES = ("errno", "strerror", "filename", "filename2", "name", "path", "msg",
                     "lineno", "offset", "text", "end_lineno", "end_offset", "code", "value",
                     "encoding", "object", "start", "end", "reason")


def _enter_folder(cwd: str | None) -> None:
    """Run where the notebook runs (its folder, seen from here), else in the task's `work/`;
    either way, modules there can be imported, as in the notebook."""
    if cwd:
        try:
            os.chdir(os.path.expanduser(cwd))
        except OSError as exc:
            raise FileNotFoundError(
                f"The notebook's folder is {cwd} on this host (by the host's 'paths:' "
                f"mapping), but it cannot be entered here: {exc.strerror}. Fix the mapping "
                "in the hosts file.") from None
    sys.path.insert(0, os.getcwd())


MAX_LISTED = 100_000  # files of `work/` compared before and after the cell, at most


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    found: dict[str, tuple[int, int]] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")  # each side compiles its own
        for name in files:
            path = os.path.join(folder, name)
            try:
                info = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                found[os.path.relpath(path, root).replace(os.sep, "/")] = \
                    (info.st_size, info.st_mtime_ns)
            if len(found) >= MAX_LISTED:
                return found
    return found


def _written(root: Path, before: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    """Files the cell created or changed in its folder: they go back next to the notebook."""
    after = _listing(root)
    return [{"name": name, "size": state[0]} for name, state in sorted(after.items())
            if before.get(name) != state]


def _exception_state(exc: BaseException) -> tuple[type, tuple[Any, ...], dict[str, Any]]:
    """What the kernel needs to raise the same exception: its type, args, and attributes,
    including those that live in C slots (errno, filename, name...), which pickling loses."""
    attributes: dict[str, Any] = {}
    for name in _ERROR_ATTRIBUTES:
        try:
            attributes[name] = getattr(exc, name)
        except Exception:  # noqa: BLE001 - absent, or a property that fails
            continue
    attributes.update(getattr(exc, "__dict__", {}))
    return type(exc), exc.args, attributes


def _describe_error(exc: BaseException) -> dict[str, Any]:
    tb = exc.__traceback__
    # Drop this module's own frames: the user wants the cell's lines, not ours. (Its code's
    # file name is not its __file__ when it came compiled in the runtime zip.)
    while tb is not None and tb.tb_frame.f_globals is globals():
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb)
    kind = type(exc)
    return {"type": kind.__qualname__, "module": kind.__module__, "message": str(exc),
            "traceback": "".join(lines)}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m remote_magic.host.runner TASKDIR", file=sys.stderr)
        return 2
    return supervise(os.path.abspath(args[0]))


if __name__ == "__main__":
    sys.exit(main())
