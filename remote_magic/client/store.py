"""The local task store: every task this user submitted, across kernels and restarts.

SQLite from the standard library in WAL mode, so that several kernels can read and write it at
once; every write is one short transaction. The remote task directory stays the truth about a
task's outcome; the store is how a kernel finds its tasks again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import TaskNotFoundError
from ..wire.states import FINAL_STATES, State
from .paths import data_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    host TEXT NOT NULL,
    name TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    job_id TEXT,
    remote_dir TEXT,
    local_dir TEXT,
    created REAL NOT NULL,
    submitted REAL,
    started REAL,
    finished REAL,
    progress TEXT,
    outputs TEXT,
    nowait INTEGER NOT NULL DEFAULT 0,
    resources TEXT,
    collect TEXT,
    placement TEXT,
    sweep TEXT,
    sweep_index INTEGER
);
CREATE INDEX IF NOT EXISTS tasks_by_hash ON tasks (content_hash, host);
CREATE INDEX IF NOT EXISTS tasks_by_created ON tasks (created);
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    name TEXT,
    created REAL NOT NULL,
    elements TEXT NOT NULL,
    labels TEXT NOT NULL,
    names TEXT NOT NULL,
    outputs TEXT NOT NULL,
    options TEXT
);
"""
_JSON_FIELDS = ("progress", "outputs", "resources", "collect", "placement")
# Columns added after the first release of the schema: a store made before gets them on open.
_ADDED = {"resources": "TEXT", "collect": "TEXT", "placement": "TEXT", "sweep": "TEXT",
          "sweep_index": "INTEGER"}
_SWEEP_JSON = ("elements", "labels", "names", "outputs", "options")


# What a status table shows by default besides the unfinished tasks: the latest tasks that
# finished in the last RECENT_HOURS hours, at most RECENT_ROWS of them (--all: every task).
RECENT_HOURS = 24
RECENT_ROWS = 20


@dataclass
class TaskRecord:
    id: str
    content_hash: str
    host: str
    state: str = State.PREPARED
    name: str | None = None
    reason: str | None = None
    job_id: str | None = None
    remote_dir: str | None = None
    local_dir: str | None = None
    created: float = field(default_factory=time.time)
    submitted: float | None = None
    started: float | None = None
    finished: float | None = None
    progress: dict[str, Any] | None = None
    outputs: list[str] | None = None
    nowait: bool = False
    resources: dict[str, Any] | None = None  # what the task asked the scheduler for
    collect: list[str] | None = None  # --collect patterns, fetched after the task ends
    placement: dict[str, Any] | None = None  # where it ran, how its files come back (prepare)
    sweep: str | None = None  # the sweep it is an element of, and which one
    sweep_index: int | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def duration(self) -> float | None:
        """Run time so far (or in all), from start to end or now."""
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started


@dataclass
class SweepRecord:
    """A sweep: one cell over many values, each value an element task (`elements`, in the
    order of the values)."""

    id: str
    host: str
    elements: list[str]
    labels: list[str]  # how each element's value is shown ("seed=3")
    names: list[str]  # the names the values are bound to
    outputs: list[str]  # the names that come back, as lists
    name: str | None = None
    created: float = field(default_factory=time.time)
    options: dict[str, Any] | None = None  # what a retry needs (resources, limit)


_COLUMNS = [f.name for f in fields(TaskRecord)]
_SWEEP_COLUMNS = [f.name for f in fields(SweepRecord)]
SETUP_TIMEOUT = 30.0  # seconds to keep trying when another kernel is setting up the store


class TaskStore:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else data_dir() / "tasks.sqlite"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._set_up()
        self._private()

    def _private(self) -> None:
        """The store holds task names, hosts and paths: readable by its owner only, even in a
        REMOTE_MAGIC_HOME made earlier or under a permissive umask (SQLite gives its -wal and
        -shm files the database's mode)."""
        for suffix in ("", "-wal", "-shm"):
            path = self.path.with_name(self.path.name + suffix)
            try:
                if path.stat().st_uid == os.getuid():
                    os.chmod(path, 0o600)
            except OSError:  # absent (not made yet), or not ours to change
                continue

    def _set_up(self) -> None:
        """Switch to WAL and create the table. Two kernels opening a new store at once can
        meet here: turning on WAL takes the database for itself, and SQLite reports a clash
        there at once, without waiting out its busy timeout, so we retry for that long."""
        deadline = time.monotonic() + SETUP_TIMEOUT
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                with self._lock, self._db:
                    self._db.executescript(_SCHEMA)
                    have = {row[1] for row in self._db.execute("PRAGMA table_info(tasks)")}
                    for column, kind in _ADDED.items():
                        if column not in have:
                            self._db.execute(f"ALTER TABLE tasks ADD COLUMN {column} {kind}")
                    self._db.execute("CREATE INDEX IF NOT EXISTS tasks_by_sweep ON tasks "
                                     "(sweep, sweep_index)")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, record: TaskRecord) -> None:
        self.add_many([record])

    def add_many(self, records: list[TaskRecord], sweep: SweepRecord | None = None) -> None:
        """Add tasks (and the sweep they make up) in ONE transaction: a thousand elements
        cost one commit, and no other kernel sees half a sweep."""
        rows = [_to_row(asdict(r)) for r in records]
        marks = ", ".join("?" for _ in _COLUMNS)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(f"INSERT OR REPLACE INTO tasks ({', '.join(_COLUMNS)}) "
                                 f"VALUES ({marks})", [[r[c] for c in _COLUMNS] for r in rows])
            if sweep is not None:
                row = asdict(sweep)
                for name in _SWEEP_JSON:
                    row[name] = json.dumps(row[name])
                self._db.execute(
                    f"INSERT OR REPLACE INTO sweeps ({', '.join(_SWEEP_COLUMNS)}) VALUES "
                    f"({', '.join('?' for _ in _SWEEP_COLUMNS)})",
                    [row[c] for c in _SWEEP_COLUMNS])

    def sweep(self, sweep_id: str) -> SweepRecord | None:
        with self._lock:
            rows = self._db.execute("SELECT * FROM sweeps WHERE id = ?", (sweep_id,)).fetchall()
        if not rows:
            return None
        row = dict(rows[0])
        for name in _SWEEP_JSON:
            row[name] = json.loads(row[name]) if row[name] is not None else None
        return SweepRecord(**{k: row[k] for k in _SWEEP_COLUMNS})

    def sweep_ids(self, prefix: str) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT id FROM sweeps WHERE id >= ? AND id < ? "
                                    "ORDER BY created", (prefix, prefix + "g")).fetchall()
        return [r[0] for r in rows]

    def delete_sweeps(self, sweep_ids: list[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM sweeps WHERE id = ?", [(s,) for s in sweep_ids])

    def many(self, task_ids: list[str]) -> list[TaskRecord]:
        """These tasks, in this order (one query per 500), leaving out any no longer stored."""
        found: dict[str, TaskRecord] = {}
        for start in range(0, len(task_ids), 500):
            part = task_ids[start:start + 500]
            marks = ", ".join("?" for _ in part)
            found.update((r.id, r) for r in self._query(
                f"SELECT * FROM tasks WHERE id IN ({marks})", part))
        return [found[t] for t in task_ids if t in found]

    def update(self, task_id: str, **values: Any) -> None:
        unknown = set(values) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown task fields: {sorted(unknown)}")
        row = _to_row(values)
        assignments = ", ".join(f"{c} = ?" for c in row)
        with self._lock:
            self._db.execute(f"UPDATE tasks SET {assignments} WHERE id = ?",
                             [*row.values(), task_id])

    def get(self, task_id: str) -> TaskRecord:
        rows = self._query("SELECT * FROM tasks WHERE id = ?", (task_id,))
        if not rows:
            raise TaskNotFoundError(f"No task {task_id} in the task store ({self.path}).")
        return rows[0]

    def resolve(self, prefix: str) -> TaskRecord:
        """A task from a unique prefix of its id, as users type the first few characters."""
        prefix = prefix.strip().lower()
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            raise TaskNotFoundError(f"'{prefix}' is not a task id (ids are hexadecimal).")
        rows = self._query("SELECT * FROM tasks WHERE id >= ? AND id < ? ORDER BY created",
                           (prefix, prefix + "g"))
        if not rows:
            raise TaskNotFoundError(
                f"No task with id '{prefix}'. %remote_status --all lists every task.")
        if len(rows) > 1:
            ids = ", ".join(r.id for r in rows[:5])
            raise TaskNotFoundError(f"Task id '{prefix}' is ambiguous ({ids}): type more of it.")
        return rows[0]

    def find_completed(self, content_hash: str, host: str) -> TaskRecord | None:
        rows = self._query("SELECT * FROM tasks WHERE content_hash = ? AND host = ? AND "
                           "state = 'completed' ORDER BY finished DESC LIMIT 1",
                           (content_hash, host))
        return rows[0] if rows else None

    def list(self, host: str | None = None, active_only: bool = False,
             limit: int | None = None, finished_since: float | None = None
             ) -> list[TaskRecord]:
        """Newest first; `active_only`: the unfinished ones, and with `finished_since` (a
        time) those that finished since then too."""
        sql, params = "SELECT * FROM tasks", []
        clauses = []
        if host is not None:
            clauses.append("host = ?")
            params.append(host)
        if active_only:
            unfinished = f"state NOT IN ({', '.join('?' for _ in FINAL_STATES)})"
            params.extend(sorted(FINAL_STATES))
            if finished_since is not None:
                unfinished = f"({unfinished} OR finished >= ?)"
                params.append(finished_since)
            clauses.append(unfinished)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY created DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._query(sql, params)

    def delete(self, task_ids: list[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM tasks WHERE id = ?", [(t,) for t in task_ids])

    def _query(self, sql: str, params: Any) -> list[TaskRecord]:
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [_from_row(dict(r)) for r in rows]


def _to_row(values: dict[str, Any]) -> dict[str, Any]:
    row = dict(values)
    for name in _JSON_FIELDS:
        if name in row and row[name] is not None:
            row[name] = json.dumps(row[name])
    if "nowait" in row:
        row["nowait"] = int(bool(row["nowait"]))
    return row


def _from_row(row: dict[str, Any]) -> TaskRecord:
    for name in _JSON_FIELDS:
        if row.get(name) is not None:
            row[name] = json.loads(row[name])
    row["nowait"] = bool(row["nowait"])
    return TaskRecord(**{k: row[k] for k in _COLUMNS})
