"""The SQLite task store, including several processes writing at once."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from remote_magic.client.store import TaskRecord, TaskStore
from remote_magic.errors import TaskNotFoundError


def record(i: int, **kw: object) -> TaskRecord:
    return TaskRecord(id=f"{i:016x}", content_hash=f"{i:064x}", host="localhost", **kw)


def test_add_get_update_roundtrip(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "s.sqlite")
    store.add(record(1, name="fit", progress={"done": 1, "total": 2}))
    store.update(record(1).id, state="completed", outputs=["a", "b"], finished=5.0)
    got = store.get(record(1).id)
    assert (got.name, got.state, got.outputs, got.progress) == (
        "fit", "completed", ["a", "b"], {"done": 1, "total": 2})
    assert got.final


def test_prefix_resolution_and_clear_errors(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "s.sqlite")
    store.add(TaskRecord(id="abc1000000000000", content_hash="x", host="h"))
    store.add(TaskRecord(id="abc2000000000000", content_hash="y", host="h"))
    assert store.resolve("abc1").id == "abc1000000000000"
    with pytest.raises(TaskNotFoundError, match="ambiguous"):
        store.resolve("abc")
    with pytest.raises(TaskNotFoundError, match="No task"):
        store.resolve("ffff")
    with pytest.raises(TaskNotFoundError, match="hexadecimal"):
        store.resolve("zz; drop table")
    with pytest.raises(ValueError, match="unknown task fields"):
        store.update("abc1000000000000", colour="red")


def test_find_completed_and_active_listing(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "s.sqlite")
    store.add(record(1, state="failed"))
    assert store.find_completed(record(1).content_hash, "localhost") is None
    store.add(record(2, state="running"))
    store.add(record(3, state="completed", finished=3.0))
    assert store.find_completed(record(3).content_hash, "localhost").id == record(3).id
    assert [r.id for r in store.list(active_only=True)] == [record(2).id]
    store.delete([record(2).id])
    assert len(store.list()) == 2


def _writer(path: str, worker: int, count: int) -> None:
    store = TaskStore(path)
    for i in range(count):
        n = worker * 100000 + i
        store.add(record(n))
        store.update(record(n).id, state="running", progress={"done": i})
        store.update(record(n).id, state="completed")
        store.list(limit=5)


def test_two_processes_at_once_do_not_corrupt_it(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite")
    TaskStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(path, w, 150)) for w in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    store = TaskStore(path)
    rows = store.list()
    assert len(rows) == 450 and all(r.state == "completed" for r in rows)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_many_processes_open_a_new_store_at_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    # Each opens the store (the first ones create it and switch it to WAL) and writes at once.
    code = ("import sys, time\nfrom remote_magic.client.store import TaskRecord, TaskStore\n"
            "store = TaskStore(sys.argv[1])\n"
            "for i in range(20):\n"
            "    store.add(TaskRecord(id=f'{sys.argv[2]}{i:04x}', content_hash='h', "
            "host='localhost'))\n"
            "print(len(store.list()) >= 20)")
    runs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "tasks.sqlite"),
                              f"{n:04x}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for n in range(12)]
    outcomes = [run.communicate(timeout=60) for run in runs]
    assert [out.strip() for out, _ in outcomes] == ["True"] * 12, [e for _, e in outcomes]


def test_the_store_is_private_whatever_the_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0)
    try:
        (tmp_path / "tasks.sqlite").touch(mode=0o666)  # left by an earlier, careless run
        store = TaskStore(tmp_path / "tasks.sqlite")
        store.add(TaskRecord(id="ab" * 8, content_hash="h", host="localhost"))
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()}
    assert set(modes.values()) == {"0o600"}, modes


def test_a_store_made_before_the_task_record_held_its_options_opens(tmp_path: Path) -> None:
    """A store written by the previous schema (no resources, collect or placement columns)
    gains them on open: its tasks stay listed, and new ones keep what they asked for."""
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE tasks (id TEXT PRIMARY KEY, content_hash TEXT NOT NULL, "
                   "host TEXT NOT NULL, name TEXT, state TEXT NOT NULL, reason TEXT, "
                   "job_id TEXT, remote_dir TEXT, local_dir TEXT, created REAL NOT NULL, "
                   "submitted REAL, started REAL, finished REAL, progress TEXT, outputs TEXT, "
                   "nowait INTEGER NOT NULL DEFAULT 0)")
        db.execute("INSERT INTO tasks (id, content_hash, host, state, created) "
                   "VALUES ('00000000000000aa', 'h', 'hpc', 'completed', 1.0)")
    db.close()
    store = TaskStore(path)
    old = store.get("00000000000000aa")
    assert (old.state, old.resources, old.collect, old.placement) == ("completed", None, None,
                                                                      None)
    store.add(record(2, resources={"cores": 4}, collect=["*.csv"], placement={"cwd": "/x"}))
    new = store.get(record(2).id)
    assert (new.resources, new.collect, new.placement) == ({"cores": 4}, ["*.csv"],
                                                           {"cwd": "/x"})
    store.close()
    assert TaskStore(path).get(record(2).id).collect == ["*.csv"]  # opened again: no change
