"""`Client.submit`: what happens to a prepared task, on the real localhost host (a real agent
subprocess, real task processes). A new task is staged and started; an identical one that
completed is reused, one still running is attached to; on a host with `max_running` a task
waits for a free slot and starts when one frees. Checked on the task store's records."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.waiting import wait_for

from remote_magic.client.core import Client, Submission
from remote_magic.client.prepare import PreparedTask, TaskOptions, prepare_cell
from remote_magic.client.store import TaskRecord
from remote_magic.errors import TransportError
from remote_magic.wire.states import State
from remote_magic.wire.taskdir import TaskPaths, read_state

ACTIVE = (State.SUBMITTED, State.RUNNING)


@pytest.fixture
def client(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    """A client on the isolated store and hosts file; the tasks run in a folder of the test
    (on this machine a task runs in the notebook's folder, here the current one)."""
    folder = home / "notebook"
    folder.mkdir()
    monkeypatch.chdir(folder)
    c = Client()
    yield c
    c.close()


def add_host(home: Path, name: str, **settings: Any) -> Path:
    """Another host on this machine in the test's hosts file, with a work directory of its
    own; returns that directory."""
    workdir = home / name
    lines = [f"  {name}:", f"    workdir: {workdir}"]
    lines += [f"    {key}: {value}" for key, value in settings.items()]
    with open(home / "hosts.yaml", "a") as f:
        f.write("\n".join(lines) + "\n")
    return workdir


def prepare(client: Client, code: str, host: str = "localhost",
            namespace: dict[str, Any] | None = None, **options: Any) -> PreparedTask:
    return prepare_cell(textwrap.dedent(code), namespace or {}, client.host(host),
                        TaskOptions(**options))


def finish(client: Client, record: TaskRecord) -> TaskRecord:
    """Follow the task to its end; its final record."""
    for _ in client.follow(record):
        pass
    return client.store.get(record.id)


def ended(client: Client, task_id: str) -> bool:
    return client.status([task_id])[0].final


def test_a_new_task_is_staged_and_started(client: Client, home: Path) -> None:
    prepared = prepare(client, "x = 6 * 7", name="answer", resources={"cores": 2, "mem": "1G"},
                       collect=["./out//*.csv"])
    staging = prepared.local_dir
    submission = client.submit(prepared)
    assert isinstance(submission, Submission)
    assert not submission.reused and not submission.attached
    record = submission.record
    assert record.id == prepared.id and record == client.store.get(prepared.id)
    assert record.state in ACTIVE and record.submitted is not None and record.reason is None
    assert record.name == "answer" and record.content_hash == prepared.content_hash
    # staged in the host's work directory, in the task's private directory
    assert record.remote_dir == str(home / "work" / "tasks" / record.id)
    paths = TaskPaths(record.remote_dir)
    assert paths.spec.is_file() and paths.inputs.is_file()
    assert paths.root.stat().st_mode & 0o777 == 0o700
    # the local copy was given its final place, named by the task id
    assert not staging.exists()
    assert record.local_dir == str(staging.parent / record.id)
    assert TaskPaths(record.local_dir).spec.is_file()
    # what the results need later: checked options and where the cell runs
    assert record.resources == {"cores": 2, "mem": "1G"}
    assert record.collect == ["out/*.csv"]
    assert record.placement is not None
    assert record.placement["cwd"] == str(home / "notebook")
    assert record.placement["prepared_at"] <= record.created
    final = finish(client, record)
    assert final.state == State.COMPLETED
    assert final.started is not None and final.finished is not None
    assert client.result(final).values == {"x": 42}


def test_an_identical_completed_task_is_reused(client: Client) -> None:
    first = finish(client, client.submit(prepare(client, "value = 6 * 7")).record)
    assert first.state == State.COMPLETED
    again = prepare(client, "value = 6 * 7")
    assert again.id == first.id  # the id is the content's hash
    submission = client.submit(again)
    assert submission.reused and not submission.attached
    assert submission.record.id == first.id and submission.record.finished == first.finished
    assert not again.local_dir.exists()  # the duplicate's files are dropped...
    assert Path(first.local_dir or "").is_dir()  # ...not the task's own
    assert TaskPaths(first.remote_dir).result.exists()
    assert [r.id for r in client.store.list()] == [first.id]
    assert client.result(submission.record).values == {"value": 42}


def test_rerun_runs_an_identical_task_again(client: Client) -> None:
    first = finish(client, client.submit(prepare(client, "value = 6 * 7")).record)
    submission = client.submit(prepare(client, "value = 6 * 7", rerun=True))
    assert not submission.reused and not submission.attached
    second = submission.record
    assert second.id != first.id and second.content_hash == first.content_hash
    assert second.state in ACTIVE
    assert finish(client, second).state == State.COMPLETED
    assert second.remote_dir != first.remote_dir
    assert TaskPaths(first.remote_dir).result.exists()  # the earlier results stay
    assert {r.id for r in client.store.list()} == {first.id, second.id}


def test_a_task_whose_results_are_gone_runs_again(client: Client) -> None:
    """The store says completed, but the host no longer has its results (removed by hand, a
    cleaned scratch space): the identical cell runs again rather than load nothing."""
    first = finish(client, client.submit(prepare(client, "value = 6 * 7")).record)
    TaskPaths(first.remote_dir).result.unlink()
    submission = client.submit(prepare(client, "value = 6 * 7"))
    assert not submission.reused and not submission.attached
    assert submission.record.id == first.id and submission.record.state in ACTIVE
    final = finish(client, submission.record)
    assert final.state == State.COMPLETED and final.finished > (first.finished or 0)
    assert client.result(final).values == {"value": 42}


def test_an_identical_failed_task_is_not_reused(client: Client) -> None:
    first = finish(client, client.submit(prepare(client, "n = 1 // 0")).record)
    assert first.state == State.FAILED
    submission = client.submit(prepare(client, "n = 1 // 0"))
    assert not submission.reused and not submission.attached
    assert submission.record.id == first.id and submission.record.state in ACTIVE
    assert finish(client, submission.record).state == State.FAILED


def test_an_identical_running_task_is_attached_to(client: Client, home: Path) -> None:
    runs = home / "runs.txt"
    code = f"""\
        import time
        with open({str(runs)!r}, "a") as log:
            log.write("ran\\n")
        time.sleep(2)
        done = True
        """
    first = client.submit(prepare(client, code)).record
    assert first.state in ACTIVE
    again = prepare(client, code)
    submission = client.submit(again)
    assert submission.attached and not submission.reused
    assert submission.record.id == first.id
    assert not again.local_dir.exists()
    assert wait_for(lambda: ended(client, first.id), timeout=30)
    final = client.store.get(first.id)
    assert final.state == State.COMPLETED
    assert runs.read_text() == "ran\n"  # one run for both cells
    assert client.result(final).values["done"] is True


def test_a_full_host_holds_a_task_until_a_slot_frees(client: Client, home: Path) -> None:
    workdir = add_host(home, "single", max_running=1)
    first = client.submit(prepare(client, "import time\ntime.sleep(1.5)\na = 1", "single"))
    assert first.record.state in ACTIVE
    second = client.submit(prepare(client, "b = 2", "single"))
    waiting = second.record
    assert not second.reused and not second.attached
    assert waiting.state == State.PREPARED
    assert (waiting.reason or "").startswith("waiting for a free slot")
    assert "single runs at most 1 tasks at once" in (waiting.reason or "")
    # staged already, so that it can start as soon as the slot frees; not started yet
    assert waiting.remote_dir == str(workdir / "tasks" / waiting.id)
    assert TaskPaths(waiting.remote_dir).spec.is_file()
    assert read_state(TaskPaths(waiting.remote_dir))["state"] == State.PREPARED
    assert client.store.get(waiting.id) == waiting
    # the session starts it after the poll that sees the first one end
    client.watch(waiting)
    done = finish(client, first.record)
    assert done.state == State.COMPLETED
    assert wait_for(lambda: client.store.get(waiting.id).state != State.PREPARED, timeout=10)
    started = finish(client, client.store.get(waiting.id))
    assert started.state == State.COMPLETED and started.reason is None
    assert started.submitted is not None and started.submitted >= (done.finished or 0)
    assert client.result(started).values == {"b": 2}


def test_waiting_tasks_start_oldest_first_one_at_a_time(client: Client, home: Path) -> None:
    add_host(home, "single", max_running=1)
    records = [client.submit(prepare(client, f"import time\ntime.sleep(0.3)\nv = {i}",
                                     "single")).record for i in range(3)]
    assert [r.state for r in records][1:] == [State.PREPARED, State.PREPARED]
    for record in records:  # as the executor and --nowait do: the session follows them all
        client.watch(record)
    assert wait_for(lambda: all(client.store.get(r.id).final for r in records), timeout=30)
    done = [client.store.get(r.id) for r in records]
    assert [r.state for r in done] == [State.COMPLETED] * 3
    for before, after in zip(done, done[1:]):
        assert after.submitted is not None and before.finished is not None
        assert after.submitted >= before.finished


def test_a_slot_held_only_by_a_stale_record_frees(home: Path, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    monkeypatch.chdir(home)
    add_host(home, "single", max_running=1)
    before = Client()
    old = before.submit(prepare(before, "x = 1", "single")).record
    before.close()  # the kernel restarts; its task ends meanwhile, unwatched
    assert wait_for(lambda: read_state(TaskPaths(old.remote_dir))["state"] == State.COMPLETED,
                    timeout=10)
    after = Client()
    try:
        assert after.store.get(old.id).state in ACTIVE  # what the store last heard
        new = after.submit(prepare(after, "y = 2", "single")).record
        after.watch(new)
        assert wait_for(lambda: after.store.get(new.id).state != State.PREPARED, timeout=3)
    finally:
        after.close()


def test_a_task_that_cannot_be_staged_is_recorded_as_failed(client: Client, home: Path) -> None:
    """A work directory anyone may write is refused (the kernel unpickles what is read there):
    the submission raises, and the store says the task did not start, and why."""
    workdir = add_host(home, "open")
    workdir.mkdir(mode=0o777)
    workdir.chmod(0o777)
    prepared = prepare(client, "z = 3", "open")
    with pytest.raises(TransportError) as raised:
        client.submit(prepared)
    record = client.store.get(prepared.id)
    assert record.state == State.FAILED and record.finished is not None
    assert (record.reason or "").startswith("not started: ")
    assert str(raised.value) in (record.reason or "")
    assert not (workdir / "tasks" / prepared.id).exists()


def test_a_task_cancelled_while_its_start_was_on_the_way_is_killed_there(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a process host the staging request starts the task too. A kill that lands while
    that request is out (the store says cancelled before the answer comes back) is carried
    to the host: the task does not run on."""
    prepared = prepare(client, "import time\ntime.sleep(30)\ndone = True")
    session = client.session("localhost")
    real = session.transport.stage

    def stage_then_kill(*args: Any, **kwargs: Any) -> Any:
        staged = real(*args, **kwargs)
        assert staged.started is not None  # one request staged and started it
        client.kill([client.store.get(prepared.id)])  # not on the host yet, as the store says
        return staged

    monkeypatch.setattr(session.transport, "stage", stage_then_kill)
    record = client.submit(prepared).record
    assert record.state == State.CANCELLED
    paths = TaskPaths(client.store.get(prepared.id).remote_dir or
                      session.transport.workdir / "tasks" / prepared.id)
    assert wait_for(lambda: read_state(paths)["state"] == State.CANCELLED, timeout=15)
