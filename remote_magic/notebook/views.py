"""How tasks look in tables and lines of text: states, durations, progress, status tables.

Each view is a MIME bundle with text/plain and text/html, so that a notebook shows HTML and
a terminal or a plain log shows text. No IPython import: the CLI uses the same text.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable
from typing import Any

from ..client.store import TaskRecord
from ..wire.states import State

STATE_COLOURS = {
    State.PREPARED: "#777", State.SUBMITTED: "#777", State.QUEUED: "#b8860b",
    State.RUNNING: "#1f6feb", State.COMPLETED: "#1a7f37", State.FAILED: "#cf222e",
    State.CANCELLED: "#777", State.TIMED_OUT: "#cf222e", State.LOST: "#cf222e",
}
COLUMNS = ("id", "name", "host", "job id", "state", State.SUBMITTED, "duration", "progress")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_progress(progress: dict[str, Any] | None) -> str:
    if not progress:
        return ""
    done, total = progress.get("done"), progress.get("total")
    text = f"{done:g}/{total:g}" if total else f"{done:g}"
    if total:
        text += f" ({100 * done / total:.0f}%)"
    message = progress.get("message")
    return f"{text} {message}" if message else text


def status_rows(records: Iterable[TaskRecord]) -> list[list[str]]:
    rows = []
    for r in records:
        submitted = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.submitted or r.created))
        rows.append([r.id, r.name or "", r.host, r.job_id or "", r.state, submitted,
                     format_duration(r.duration), format_progress(r.progress)])
    return rows


def status_table(records: Iterable[TaskRecord],
                 sweeps: dict[str, list[TaskRecord]] | None = None) -> dict[str, str]:
    """The table of `%remote_status` and `remote-magic status`: with `sweeps` (sweep id ->
    its elements), the elements of each are one row, where the sweep's first one would be."""
    rows: list[list[str]] = []
    shown: set[str] = set()
    for record in records:
        if sweeps is not None and record.sweep in sweeps:
            if record.sweep not in shown:
                shown.add(record.sweep)
                rows.append(sweep_row(record.sweep, sweeps[record.sweep]))
        else:
            rows.extend(status_rows([record]))
    return table(COLUMNS, rows, 4, STATE_COLOURS,
                 "No tasks. %%remote runs a cell as a task; --all shows finished ones of any age.")


# the state a sweep's row shows: the least advanced of its elements' (then the worst outcome)
_SWEEP_ORDER = (State.PREPARED, State.SUBMITTED, State.QUEUED, State.RUNNING, State.LOST,
                State.TIMED_OUT, State.FAILED, State.CANCELLED, State.COMPLETED)


def sweep_row(sweep_id: str, elements: list[TaskRecord]) -> list[str]:
    """A sweep as one status row: its elements' counts in the progress column."""
    counts: dict[str, int] = {}
    for record in elements:
        counts[record.state] = counts.get(record.state, 0) + 1
    running = [s for s in _SWEEP_ORDER[:4] if counts.get(s)]
    state = running[-1] if State.RUNNING in running else (running[0] if running else next(
        s for s in _SWEEP_ORDER[4:] if counts.get(s)))
    done = sum(1 for r in elements if r.final)
    others = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items()
                       if s != State.COMPLETED)
    first = min(elements, key=lambda r: r.submitted or r.created)
    submitted = time.strftime("%Y-%m-%d %H:%M:%S",
                              time.localtime(first.submitted or first.created))
    started = [r.started for r in elements if r.started]
    ends = [r.finished for r in elements if r.finished]
    duration = None
    if started:
        duration = (max(ends) if ends and done == len(elements) else time.time()) - min(started)
    arrays = {r.job_id.split("_")[0].split("[")[0].split(".")[0] for r in elements if r.job_id}
    job = next(iter(arrays)) if len(arrays) == 1 else (f"{len(arrays)} jobs" if arrays else "")
    name = elements[0].name or ""
    return [sweep_id, f"{name} (sweep of {len(elements)})".strip(), elements[0].host, job,
            state, submitted, format_duration(duration),
            f"{done}/{len(elements)} done" + (f" ({others})" if others else "")]


def table(columns: tuple[str, ...], rows: list[list[str]], coloured: int,
          colours: dict[str, str], empty: str) -> dict[str, str]:
    """Rows as aligned text and as HTML, the `coloured` column in its value's colour; the
    message `empty` when there is no row."""
    if not rows:
        return {"text/plain": empty, "text/html": f"<p>{html.escape(empty)}</p>"}
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(
            f"<td style='color:{colours.get(v, 'inherit')}'>{html.escape(v)}</td>"
            if i == coloured else f"<td>{html.escape(v)}</td>" for i, v in enumerate(row))
        + "</tr>" for row in rows)
    return {"text/plain": "\n".join(lines),
            "text/html": f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"}


ALLOC_COLUMNS = ("allocation", "host", "job id", "state", "node", "slots", "time left", "note")
ALLOC_COLOURS = {"queued": "#b8860b", "starting": "#b8860b", "running": "#1f6feb",
                 "ended": "#777"}


def allocations_table(entries: Iterable[dict[str, Any]]) -> dict[str, str]:
    """The table of `%remote_alloc` and `remote-magic alloc`."""
    rows = [[e["name"], e.get("host") or "", e.get("job_id") or "", e["state"],
             e.get("node") or "", str(e.get("slots") or ""), format_duration(e.get("time_left")),
             e.get("reason") or ""] for e in entries]
    return table(ALLOC_COLUMNS, rows, 3, ALLOC_COLOURS,
                 "No allocations. %remote_alloc NAME -q HOST --walltime 1:00:00 starts one; "
                 "cells then run on it with %%remote -q NAME.")


def allocation_line(entry: dict[str, Any]) -> str:
    """One allocation in a sentence: what `%remote_alloc NAME` and `--stop` print."""
    where = f" on {entry['node']}" if entry.get("node") else ""
    why = f" ({entry['reason']})" if entry.get("reason") else ""
    line = (f"allocation {entry['name']}: job {entry.get('job_id')} of {entry.get('host')}, "
            f"{entry['state']}{where}{why}")
    if entry["state"] != "ended":
        line += f"; send cells to it with %%remote -q {entry['name']}"
    return line


def outcome_lines(outcome: dict[str, str], records: list[TaskRecord]) -> list[str]:
    """A line per task, but the elements of a sweep as one line per outcome."""
    lines = []
    sweeps: dict[tuple[str, str], int] = {}
    of = {r.id: r.sweep for r in records}
    for task_id, said in outcome.items():
        if of.get(task_id):
            key = (of[task_id], said)
            sweeps[key] = sweeps.get(key, 0) + 1
        else:
            lines.append(f"{task_id}: {said}")
    for (sweep_id, said), count in sweeps.items():
        lines.append(f"sweep {sweep_id}: {count} element{'s' if count != 1 else ''} {said}")
    return lines
