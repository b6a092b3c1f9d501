"""The IPython magics: parse arguments, call the client, render. Nothing else lives here."""

from __future__ import annotations

import os
import re
import sys
import time
import traceback
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display
from traitlets import Enum, Float, Integer, Unicode, observe

from ..client.core import Client, get_client, parse_age
from ..client.prepare import prepare_cell
from ..client.results import Shown, TaskResult, decoder
from ..client.session import Update
from ..client.store import RECENT_HOURS, RECENT_ROWS, SweepRecord, TaskRecord
from ..client.sweeps import SweepFollow, SweepResult, check_keys, expand, prepare_sweep
from ..errors import (
    OptionError,
    RemoteMagicError,
    RemoteTaskError,
    TaskFailedError,
    TaskNotFoundError,
    clipped,
)
from . import widgets
from .arguments import id_prefix, parse, resources, take_maps, task_options
from .output import OutputStream
from .render import cell_stream, displays_only
from .sweep_view import SweepView, sweep_view
from .views import allocation_line, allocations_table, outcome_lines, status_table
from .widgets import TaskView, task_view, watch_status


class _Value:
    """A remote value that could not be loaded here, shown from its MIME bundle."""

    def __init__(self, shown: Shown) -> None:
        self._shown = shown

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        return self._shown.bundle, self._shown.metadata

    def __repr__(self) -> str:
        return str((self._shown.bundle or {}).get("text/plain", ""))


def resource_arguments(magic: Any) -> Any:
    """The resource options a batch job takes, for `%%remote` and `%remote_alloc` alike."""
    for decorate in reversed([
            argument("--walltime", help="time limit, e.g. 2:00:00 (schedulers)"),
            argument("--cores", type=int, help="CPU cores (schedulers)"),
            argument("--mem", help="memory, e.g. 16G (schedulers)"),
            argument("--nodes", type=int, help="nodes (schedulers)"),
            argument("--gpus", type=int, help="GPUs (schedulers)"),
            argument("--partition", help="partition or queue (schedulers)"),
            argument("--account", help="account to charge (schedulers)")]):
        magic = decorate(magic)
    return magic


@magics_class
class RemoteMagics(Magics):
    """The magics, and their defaults as IPython configuration: `%config RemoteMagics` lists
    them, `%config RemoteMagics.default_host = "hpc"` sets one in a kernel, and
    `c.RemoteMagics.default_host = "hpc"` in ipython_config.py for every kernel."""

    default_host = Unicode(
        None, allow_none=True,
        help="Host of a %%remote cell without -q (None: the hosts file's 'default', else "
             "localhost).").tag(config=True)
    display = Enum(
        ["auto", "widget", "text"], "auto",
        help="How tasks are shown: live widgets, or text lines. 'auto': "
             "$REMOTE_MAGIC_DISPLAY if set, else widgets in Jupyter front ends that render "
             "them.").tag(config=True)
    recent_rows = Integer(
        RECENT_ROWS, min=0,
        help="How many tasks that finished recently %remote_status shows besides the "
             "unfinished ones.").tag(config=True)
    recent_hours = Float(
        RECENT_HOURS, min=0,
        help="How recently (hours) such a task must have finished.").tag(config=True)

    status_interval = Float(
        None, allow_none=True, min=1.0, max=3600.0,
        help="The least time (seconds) between this kernel's background status requests to "
             "a host whose hosts-file entry sets no 'status_interval' (None: as often as "
             "useful, 0.1-5 s).").tag(config=True)
    scheduler_poll = Float(
        None, allow_none=True, min=1.0, max=3600.0,
        help="The least time (seconds) between queries of a host's scheduler, shared by all "
             "of your kernels on that host, where its hosts-file entry sets no "
             "'scheduler_poll' (None: 1 s).").tag(config=True)

    @observe("display")
    def _display_changed(self, change: dict[str, Any]) -> None:
        widgets.DISPLAY = change["new"]

    @observe("status_interval", "scheduler_poll")
    def _poll_changed(self, change: dict[str, Any]) -> None:
        client = getattr(self, "client", None)  # none yet while the config is loaded
        if client is not None:
            setattr(client.poll_defaults, change["name"], change["new"])

    def __init__(self, shell: Any, client: Client | None = None) -> None:
        super().__init__(shell)
        widgets.DISPLAY = self.display
        self.client = client or get_client()
        self.client.poll_defaults.status_interval = self.status_interval
        self.client.poll_defaults.scheduler_poll = self.scheduler_poll
        # --nowait tasks whose results are due here, with the objects they were sent
        self.pending: dict[str, tuple[TaskRecord, dict[str, Any]]] = {}
        self.views: dict[str, TaskView] = {}  # live views of tasks followed in the background
        # sweeps detached or sent with --nowait: loaded when all their elements have ended
        self.sweeps: dict[str, tuple[SweepFollow, SweepView]] = {}

    # ------------------------------------------------------------ %%remote

    @magic_arguments()
    @argument("-q", "--queue", metavar="HOST",
              help="host from the hosts file (default: its 'default', else localhost)")
    @argument("-i", "--inputs", metavar="a,b",
              help="extra names to send, beyond those the cell reads")
    @argument("-o", "--outputs", metavar="a,b",
              help="names to bring back (default: every name the cell assigns)")
    @resource_arguments
    @argument("--files", nargs="+", metavar="PATH", default=[],
              help="local files or folders staged into the task's working directory "
                   "(absolute paths go where the host's 'paths' mapping says)")
    @argument("--collect", nargs="+", metavar="GLOB", default=[],
              help="files of the task's working directory copied back here afterwards")
    @argument("--name", help="a label shown in status tables")
    @argument("--nowait", action="store_true",
              help="return at once; results load at the start of the first cell run after "
                   "the task ends")
    @argument("--rerun", action="store_true",
              help="run again even if an identical task already completed")
    @argument("--map", action="append", metavar="NAME=EXPR",
              help="a sweep: run the cell once per value of EXPR (evaluated here) with NAME "
                   "bound to it, as one job array on batch hosts; the names the cell assigns "
                   "come back as lists. Several --map: every combination")
    @argument("--zip", action="store_true",
              help="with several --map: take their values side by side, not every combination")
    @argument("--partial", action="store_true",
              help="with --map: do not raise when elements fail; their places hold the "
                   "exceptions")
    @argument("--keyed", action="store_true",
              help="with --map: names come back as dicts keyed by the values, not lists")
    @cell_magic
    def remote(self, line: str, cell: str) -> Any:
        """Run this cell as a task on a host and load its results back here.

        The cell's code and the notebook variables it reads are sent; the names it assigns,
        its printed output, displays and last value come back as if it had run here.
        """
        line, maps = take_maps(line)
        args = parse(self.remote, line, cell=True)
        options = task_options(args)
        host = self.client.host(args.queue or self.default_host)
        code = self.shell.transform_cell(cell)
        if maps:
            return self._sweep(code, maps, args, options, host)
        if args.zip or args.partial or args.keyed:
            raise OptionError("--zip, --partial and --keyed go with --map NAME=EXPR (a sweep)")
        prepared = prepare_cell(code, self.shell.user_ns, host, options,
                                hidden=self.shell.user_ns_hidden, figures=_figure_settings())
        submission = self.client.submit(prepared)
        record = submission.record
        originals = prepared.values
        if submission.reused:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.finished or 0))
            view = task_view(record, waiting=True)
            return self._finish(record, view, originals, notes=[
                f"reused the results of the identical task {record.id} (completed {when}; "
                "--rerun runs it again)"])
        if submission.attached:
            print(f"An identical task ({record.id}) is already {record.state} on "
                  f"{record.host}: waiting for it instead of starting another.")
        if options.nowait:
            self.pending[record.id] = (record, originals)
            self._watch_in_background(record, task_view(record, self._canceller(record)))
            print(f"Task {record.id} runs on {record.host} in the background; its results load "
                  "at the start of the first cell run after it ends.")
            return None
        return self._follow(record, originals)

    def _sweep(self, code: str, maps: list[tuple[str, str]], args: Any, options: Any,
               host: Any) -> None:
        """`%%remote --map`: the cell once per value, followed in one view, its names loaded
        as lists (or dicts) when every element has ended."""
        values = {}
        for name, expr in maps:
            if name in values:
                raise OptionError(f"--map {name} is given twice: each name takes one EXPR")
            try:
                values[name] = eval(expr, self.shell.user_ns)  # noqa: S307 - the user's own
            except Exception as exc:  # noqa: BLE001 - said as the option's fault, not ours
                raise OptionError(f"--map {name}={clipped(expr, 60)}: evaluating it raised "
                                  f"{type(exc).__name__}: {clipped(str(exc), 200)}") from None
        bindings = expand(values, args.zip)
        if args.keyed:
            check_keys(bindings)
        prepared = prepare_sweep(code, self.shell.user_ns, host, options, bindings,
                                 hidden=self.shell.user_ns_hidden, figures=_figure_settings())
        prepared.keyed = args.keyed
        submission = self.client.submit_sweep(prepared)
        sweep = submission.sweep
        follow = SweepFollow(sweep, prepared.base.values, bindings, args.keyed, args.partial)
        view = sweep_view(sweep.id, sweep.host, sweep.labels,
                          lambda: self.client.kill(self.client.elements(sweep)),
                          waiting=not options.nowait)
        self._show_elements(sweep, view)
        if submission.reused:
            print(f"Sweep {sweep.id}: {submission.reused} of {len(sweep.elements)} elements "
                  "reuse the results of identical tasks that completed (--rerun runs them "
                  "again).")
        if options.nowait:
            self.sweeps[sweep.id] = (follow, view)
            self._watch_sweep(sweep, view)
            print(f"Sweep {sweep.id} ({len(sweep.elements)} elements) runs on {sweep.host} in "
                  "the background; its results load at the start of the first cell run after "
                  "it ends.")
            return None
        self._wait_for_sweep(follow, view)
        return None

    def _wait_for_sweep(self, follow: SweepFollow, view: SweepView) -> None:
        """Show the sweep's elements moving until all have ended, then load it; Ctrl-C
        detaches (it then loads at the start of the first cell run after it ended)."""
        sweep = follow.sweep
        try:
            for index, update in self.client.follow_sweep(sweep):
                if index >= 0:
                    view.update(index, update)
        except KeyboardInterrupt:
            view.detached()
            self.sweeps[sweep.id] = (follow, view)
            self._watch_sweep(sweep, view)
            print(f"\nDetached from sweep {sweep.id}: it keeps running on {sweep.host}, and "
                  "loads at the start of the first cell run after it ends. Cancel it with "
                  f"%remote_kill {sweep.id} (or the Cancel button).")
            return
        self._load_sweep(follow, view, raise_error=True)

    def _watch_sweep(self, sweep: SweepRecord, view: SweepView) -> None:
        """Keep a detached or --nowait sweep's view live, from the sessions' threads."""
        where = {task_id: i for i, task_id in enumerate(sweep.elements)}
        for record in self.client.elements(sweep):
            if not record.final:
                self.client.watch(record, listener=lambda u: view.update(where[u.task_id], u))

    def _load_sweep(self, follow: SweepFollow, view: SweepView,
                    raise_error: bool) -> SweepResult:
        """Load a sweep's results into the namespace; raise (unless --partial) when elements
        did not complete."""
        result = self.client.sweep_result(follow.sweep, namespace=self.shell.user_ns,
                                          originals=follow.originals,
                                          bindings=follow.bindings, keyed=follow.keyed)
        names = result.apply(self.shell.user_ns)
        summary = result.summary()
        loaded = f"loaded {', '.join(names)}" if names else "no names to load"
        notes = result.notes[:5] + ([f"... and {len(result.notes) - 5} more notes"]
                                    if len(result.notes) > 5 else [])
        view.finished([summary, loaded, *notes])
        error = result.error()
        if error is not None and not follow.partial and raise_error:
            raise error from next(iter(error.errors.values()))
        return result

    def _canceller(self, record: TaskRecord) -> Any:
        return lambda: self.client.kill([self.client.store.get(record.id)])

    def _watch_in_background(self, record: TaskRecord, view: TaskView) -> None:
        self.views[record.id] = view
        self.client.watch(record, listener=view.update)

    def _follow(self, record: TaskRecord, originals: dict[str, Any] | None) -> Any:
        view = task_view(record, self._canceller(record), waiting=True)
        stream = cell_stream(self._decoder(record, originals), after_clear=view.show)
        ended = None
        try:
            for update in self.client.follow(record):
                stream.feed(update)
                if update.final and stream.incomplete:
                    ended = update  # shown after the rest of the output, not amid a line
                    continue
                view.update(update)
        except KeyboardInterrupt:
            view.detached()
            self._watch_in_background(record, view)
            print(f"\nDetached from task {record.id}: it keeps running on {record.host}. "
                  f"Load its results later with %remote_fetch {record.id}, or cancel it with "
                  f"%remote_kill {record.id} (or the Cancel button).")
            return None
        return self._finish(self.client.store.get(record.id), view, originals, stream,
                            ended=ended)

    def _finish(self, record: TaskRecord, view: TaskView, originals: dict[str, Any] | None,
                stream: OutputStream | None = None, notes: list[str] | None = None,
                ended: Update | None = None) -> Any:
        """Load results into the namespace and finish showing the task's output in this cell
        (all of it, when nothing was streamed); raise if the task failed. `ended`: the
        task's last update, held back while its output was still coming."""
        if stream is None or stream.incomplete:
            stream = stream or cell_stream(self._decoder(record, originals),
                                           after_clear=view.show)
            for update in self.client.output(record, stream.offsets):
                stream.feed(update)
        if ended is not None:
            view.update(ended)
        result = self._load(record, originals, stream)
        view.loaded(result.changed, [*(notes or []), *_notes(result)])
        if stream.held:  # figures left open: after the cell's value, as inline shows them
            def show_held(*_: Any) -> None:
                self.shell.events.unregister("post_execute", show_held)
                stream.show_held()

            self.shell.events.register("post_execute", show_held)
        if result.error is not None:
            raise result.error
        if result.value is not None:
            return result.value.obj if result.value.bundle is None else _Value(result.value)
        return None

    def _decoder(self, record: TaskRecord, originals: dict[str, Any] | None) -> Any:
        return decoder(self.shell.user_ns, originals, self.client.sent_inputs(record))

    def _load(self, record: TaskRecord, originals: dict[str, Any] | None,
              stream: OutputStream) -> TaskResult:
        """The task's results, applied to the notebook's namespace, displays shown."""
        result = self.client.result(record, namespace=self.shell.user_ns, originals=originals)
        result.apply(self.shell.user_ns)
        stream.finish(result.entries)
        for name, reason in sorted(result.skipped.items()):
            print(f"remote_magic: '{name}' could not be brought back ({reason}).",
                  file=sys.stderr)
        return result

    def load_finished(self, *_: Any) -> None:
        """pre_run_cell hook: load --nowait results that arrived since the last cell.

        A task that cannot be loaded is dropped from the pending ones after one line saying
        why: this hook runs before every cell, and a failure left in place would repeat there
        (as an "Error in callback" traceback) for the rest of the session.
        """
        for sweep_id in list(self.sweeps):
            self._load_pending_sweep(sweep_id)
        for task_id in list(self.pending):
            try:
                self._load_pending(task_id)
            except TaskNotFoundError:
                self._drop_pending(task_id, "purged elsewhere", "was purged elsewhere (by "
                                   "another kernel or remote-magic purge) before its results "
                                   "were loaded here: there is nothing left to load")
            except Exception as exc:  # noqa: BLE001 - one line now, not a traceback every cell
                self._drop_pending(task_id, "not loaded", f"could not be loaded "
                                   f"({type(exc).__name__}: {clipped(_first_line(exc), 200)}); "
                                   f"%remote_fetch {task_id} tries again")

    def _load_pending_sweep(self, sweep_id: str) -> None:
        """Load a --nowait or detached sweep once all its elements have ended, saying in one
        line how it went (a failure is said, not raised: this cell is about something else)."""
        follow, view = self.sweeps[sweep_id]
        if not all(r.final for r in self.client.elements(follow.sweep)):
            return
        del self.sweeps[sweep_id]
        try:
            result = self._load_sweep(follow, view, raise_error=False)
        except Exception as exc:  # noqa: BLE001 - one line now, not a traceback every cell
            print(f"remote_magic: sweep {sweep_id} could not be loaded ({type(exc).__name__}: "
                  f"{clipped(_first_line(exc), 200)}); %remote_fetch {sweep_id} tries again.",
                  file=sys.stderr)
            return
        names = ", ".join(sorted(result.values)) or "no variables"
        failed = f" ({len(result.errors)} did not complete: %remote_retry {sweep_id} runs " \
                 "them again)" if result.errors else ""
        print(f"remote_magic: {result.summary()}; loaded {names}{failed}.",
              file=sys.stderr if result.errors else sys.stdout)

    def _load_pending(self, task_id: str) -> None:
        """Load one --nowait task if it has ended, with a one-line notice of how it went."""
        record = self.client.store.get(task_id)
        if not record.final:
            return
        _, originals = self.pending[task_id]
        stream = displays_only(self._decoder(record, originals))
        result = self._load(record, originals, stream)
        del self.pending[task_id]
        stream.show_held()
        view = self.views.pop(task_id, None)
        if view is not None:
            view.loaded(result.changed, _notes(result))
        names = ", ".join(result.changed) or "no variables"
        if result.error is None:
            print(f"remote_magic: task {task_id} completed on {record.host}: loaded {names} "
                  f"(%remote_log {task_id} shows what it printed).")
        else:  # one line: this cell is about something else; the traceback is one call away
            see = f"%remote_log {task_id} --stderr shows its error output"
            if not isinstance(result.error, TaskFailedError):  # a Python exception
                see = f"%remote_fetch {task_id} shows the traceback, {see}"
            print(f"remote_magic: task {task_id} {record.state} on {record.host}: "
                  f"{_one_line(result.error)} (loaded {names}; {see}).", file=sys.stderr)

    def _drop_pending(self, task_id: str, note: str, why: str) -> None:
        """Stop waiting to load a --nowait task, saying so once: `note` in its view, `why`
        in full below the cell."""
        self.pending.pop(task_id, None)
        view = self.views.pop(task_id, None)
        if view is not None:
            view.loaded([], [note])
        print(f"remote_magic: task {task_id} {why}.", file=sys.stderr)

    # ------------------------------------------------------------ line magics

    @magic_arguments()
    @argument("ids", nargs="*", help="task or sweep ids (or unique prefixes)")
    @argument("-q", "--queue", metavar="HOST", help="only tasks of this host")
    @argument("--all", action="store_true",
              help="every task, finished ones of any age too (by default: the unfinished ones "
                   "and the last 20 that finished in the last 24 hours); with a sweep's id, a "
                   "row per element")
    @argument("--watch", action="store_true",
              help="the unfinished tasks, live until they end")
    @line_magic
    def remote_status(self, line: str) -> None:
        """Table of tasks: id, name, host, job id, state, submitted, duration, progress. A
        sweep is one row (its elements' counts), unless named with --all."""
        args = parse(self.remote_status, line)
        records, sweeps = self.client.status_view(
            [id_prefix(i) for i in args.ids], args.queue, args.all, live=args.watch,
            recent=(self.recent_rows, self.recent_hours))
        if args.watch and records:
            listed = [r.id for r in records]
            watch_status(records, lambda: self.client.status(listed))
            return
        display(status_table(records, sweeps), raw=True)

    @magic_arguments()
    @argument("id", help="task or sweep id (or a unique prefix)")
    @line_magic
    def remote_fetch(self, line: str) -> Any:
        """Load a task's (or a sweep's) results into the namespace (waiting for it if it
        still runs)."""
        args = parse(self.remote_fetch, line)
        found = self.client.find_any(id_prefix(args.id))
        if isinstance(found, SweepRecord):
            return self._fetch_sweep(found)
        record = self.client.status([found.id])[0]
        _, originals = self.pending.pop(record.id, (None, None))
        if not record.final:
            return self._follow(record, originals)
        view = self.views.pop(record.id, None) or task_view(record, waiting=True)
        return self._finish(record, view, originals)

    def _fetch_sweep(self, sweep: SweepRecord) -> None:
        follow, view = self.sweeps.pop(sweep.id, (None, None))
        if follow is None:  # sent by another kernel, or before a restart
            follow = SweepFollow(sweep, {}, keyed=bool((sweep.options or {}).get("keyed")))
        if view is None:
            view = sweep_view(sweep.id, sweep.host, sweep.labels)
            self._show_elements(sweep, view)
        self._wait_for_sweep(follow, view)
        return None

    def _show_elements(self, sweep: SweepRecord, view: SweepView) -> None:
        """The view starts from each element's state as the store has it (reused ones have
        ended already; the others move from there)."""
        states = {r.id: r for r in self.client.elements(sweep)}
        for index, task_id in enumerate(sweep.elements):
            record = states.get(task_id)
            if record is not None:
                view.update(index, Update(record.id, record.state, record.reason))

    @magic_arguments()
    @argument("id", help="task or sweep id (or a unique prefix)")
    @argument("index", nargs="?", type=int, help="with a sweep's id: the element's index")
    @argument("--stderr", action="store_true", help="show the error stream instead")
    @line_magic
    def remote_log(self, line: str) -> None:
        """The task's printed output so far (a sweep's element: SWEEP INDEX)."""
        args = parse(self.remote_log, line)
        found = self.client.task_or_element(id_prefix(args.id), args.index, "%remote_log")
        text = self.client.log(found, "stderr" if args.stderr else "stdout")
        print(text if text else f"(task {found.id} has written nothing to "
                                f"{'stderr' if args.stderr else 'stdout'} yet)", end="")

    @magic_arguments()
    @argument("ids", nargs="*", help="task or sweep ids (or unique prefixes)")
    @argument("-q", "--queue", metavar="HOST", help="with --all: the host whose tasks to kill")
    @argument("--all", action="store_true", help="every unfinished task (of -q HOST)")
    @line_magic
    def remote_kill(self, line: str) -> None:
        """Cancel tasks (scheduler cancel or process kill); a sweep's id cancels its
        unfinished elements."""
        args = parse(self.remote_kill, line)
        if args.all:
            records = self.client.store.list(host=args.queue, active_only=True)
        elif args.ids:
            records = self.client.records_for([id_prefix(i) for i in args.ids])
        else:
            raise RemoteMagicError("Name the tasks to kill, or use --all [-q HOST].")
        outcome = self.client.kill(records)
        for line_ in outcome_lines(outcome, records):
            print(line_)

    @magic_arguments()
    @argument("ids", nargs="*", help="task or sweep ids (or unique prefixes)")
    @argument("--older", metavar="AGE", help="finished tasks older than AGE (7d, 12h, 30m)")
    @argument("-q", "--queue", metavar="HOST", help="only tasks of this host")
    @line_magic
    def remote_purge(self, line: str) -> None:
        """Remove finished tasks' directories, on the host and here."""
        args = parse(self.remote_purge, line)
        if args.ids:
            records = self.client.records_for([id_prefix(i) for i in args.ids])
        elif args.older:
            records = self.client.older_than(parse_age(args.older), host=args.queue)
        else:
            raise RemoteMagicError("Name the tasks to purge, or use --older AGE [-q HOST].")
        outcome = self.client.purge(records)
        for line_ in outcome_lines(outcome, records):
            print(line_)
        if not outcome:
            print("Nothing to purge.")

    @magic_arguments()
    @argument("id", help="the sweep's id (or a unique prefix)")
    @line_magic
    def remote_retry(self, line: str) -> None:
        """Run a sweep's failed, cancelled, timed-out and lost elements again (on a batch
        host as one smaller job array); %remote_fetch SWEEP then loads the whole sweep."""
        args = parse(self.remote_retry, line)
        found = self.client.find_any(id_prefix(args.id))
        if not isinstance(found, SweepRecord):
            raise OptionError(f"%remote_retry {found.id}: that is a task, not a sweep; run "
                              "its cell again (with --rerun) to run it anew")
        started = self.client.retry_sweep(found)
        if not started:
            print(f"Sweep {found.id}: every element completed; nothing to retry.")
            return
        indices = [i for i, t in enumerate(found.elements) if t in {r.id for r in started}]
        shown = ", ".join(map(str, indices[:20])) + (" ..." if len(indices) > 20 else "")
        print(f"Sweep {found.id}: {len(started)} element{'s' if len(started) != 1 else ''} "
              f"started again ({shown}); %remote_fetch {found.id} waits for them and loads "
              "the whole sweep.")

    @magic_arguments()
    @argument("name", nargs="?", help="the allocation's name: then a host name (-q NAME)")
    @argument("-q", "--queue", metavar="HOST", help="the batch host to hold it on")
    @resource_arguments
    @argument("--slots", type=int, help="tasks at once on it (default: --cores, else 1)")
    @argument("--stop", metavar="NAME", help="end this allocation; its running tasks are "
                                             "cancelled")
    @line_magic
    def remote_alloc(self, line: str) -> None:
        """Hold one batch job with a warm worker; cells sent to its name run there at once.
        With no name, the allocations and their state; --stop NAME ends one."""
        args = parse(self.remote_alloc, line)
        if args.stop:
            print(allocation_line(self.client.stop_allocation(args.stop)))
        elif args.name is None:
            display(allocations_table(self.client.allocations(args.queue)), raw=True)
        else:
            if args.queue is None:
                raise RemoteMagicError(f"%remote_alloc {args.name}: name the batch host to "
                                       "hold it on with -q HOST")
            print(allocation_line(self.client.allocate(args.name, args.queue, resources(args),
                                                       args.slots)))

    @magic_arguments()
    @argument("--test", action="store_true", help="check that each host works")
    @line_magic
    def remote_hosts(self, line: str) -> None:
        """The configured hosts; --test checks each one step by step."""
        from ..client.hostcheck import check_host, hosts_table

        args = parse(self.remote_hosts, line)
        config = self.client.config()
        print(hosts_table(config))
        if args.test:
            for name in config.hosts:
                for check in check_host(self.client, name):
                    print(check)


def _figure_settings() -> dict[str, Any] | None:
    """The inline backend's figure formats, when the notebook has loaded it."""
    config = sys.modules.get("matplotlib_inline.config")
    if config is None:
        return None
    inline = config.InlineBackend.instance()
    return {"formats": sorted(inline.figure_formats), "kwargs": dict(inline.print_figure_kwargs)}


def _notes(result: TaskResult) -> list[str]:
    """What the user should know about how the results landed."""
    notes = list(result.file_notes)
    if result.collected:
        notes.append(f"collected into {os.getcwd()}: {', '.join(result.collected)}")
    if result.unsettled:
        notes.append("the task changed settings that could not be applied here: "
                     + ", ".join(k.split(":")[0] for k in result.unsettled))
    for name, why in sorted(result.rebound.items()):
        notes.append(f"{name} was changed by the task and rebound here, not updated in place "
                     f"({why})")
    return notes


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def _one_line(error: RemoteTaskError) -> str:
    """The exception type and the first line of its message, for a notice."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    where = f" (raised in task {error.task_id} on "
    if where in message:  # the notice names the task and host already
        message = message[:message.index(where)]
    if len(message) > 200:
        message = message[:199] + "…"
    if isinstance(error, TaskFailedError):  # "Task ID on HOST failed: why": the why is news
        return message.split(": ", 1)[-1]
    return f"{error.remote_type}: {message}" if message else error.remote_type


def _show_error(shell: Any, etype: type, value: BaseException, tb: Any,
                tb_offset: Any = None) -> list[str]:
    """Errors the user can fix show as their message; remote ones as the remote traceback."""
    if isinstance(value, RemoteTaskError) and value.remote_traceback:
        stb = [value.remote_traceback.rstrip("\n"),
               f"(raised on the host by task {value.task_id}; "
               f"%remote_log {value.task_id} --stderr shows its error output)"]
        hint = _missing_name_hint(value, shell.user_ns)
        if hint:
            stb.append(hint)
    elif isinstance(value, SyntaxError):  # as IPython shows a cell that does not compile
        stb = [line.rstrip("\n") for line in traceback.format_exception_only(etype, value)]
    else:
        stb = [f"{etype.__name__}: {value}"]
    shell._showtraceback(etype, value, stb)
    return stb


_UNDEFINED = re.compile(r"(?:name|variable) '(\w+)' is not defined")


def _missing_name_hint(error: BaseException, namespace: dict[str, Any]) -> str:
    """A name the task missed but the notebook has was used in a way the cell's code does not
    show (a string evaluated at run time, `globals()`): say how to send it."""
    if not isinstance(error, NameError):
        return ""
    name = getattr(error, "name", None) or next(iter(_UNDEFINED.findall(str(error))), None)
    if not name or name not in namespace:
        return ""
    return (f"'{name}' is a variable of this notebook that the cell does not name in its code, "
            f"so it was not sent: add -i {name} to the %%remote line.")


_loaded: dict[int, RemoteMagics] = {}


def load(ipython: Any) -> None:
    magics = RemoteMagics(ipython)
    ipython.register_magics(magics)
    ipython.set_custom_exc((RemoteMagicError,), _show_error)
    ipython.events.register("pre_run_cell", magics.load_finished)
    _loaded[id(ipython)] = magics


def unload(ipython: Any) -> None:
    magics = _loaded.pop(id(ipython), None)
    if magics is not None:
        ipython.events.unregister("pre_run_cell", magics.load_finished)
    ipython.set_custom_exc((), None)
