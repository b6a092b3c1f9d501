"""`load_result` and `Client.result` on the files real tasks leave: tiny cells run on the
localhost host (a real agent, real task processes), then their task directories read back.

tests/client/test_results.py already covers the local source lines added to a traceback, an
output whose class exists only on the host, and four kinds of damage (result.json missing or
not JSON, outputs.rmns cut short, state.json not JSON); the cases here are the others."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.hosts import settled
from helpers.waiting import wait_for

from remote_magic.client.core import Client
from remote_magic.client.prepare import PreparedTask, TaskOptions, prepare_cell
from remote_magic.client.results import TaskResult, load_result
from remote_magic.client.store import TaskRecord
from remote_magic.errors import RemoteTaskError, TaskFailedError, TransportError
from remote_magic.wire.states import State
from remote_magic.wire.taskdir import TaskPaths, read_json, read_state


@pytest.fixture
def client(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    folder = home / "notebook"  # on this machine a task runs in the notebook's folder
    folder.mkdir()
    monkeypatch.chdir(folder)
    c = Client()
    yield c
    c.close()


def submit(client: Client, code: str, namespace: dict[str, Any] | None = None
           ) -> tuple[TaskRecord, PreparedTask]:
    prepared = prepare_cell(textwrap.dedent(code), {} if namespace is None else namespace,
                            client.host("localhost"), TaskOptions(rerun=True))
    return client.submit(prepared).record, prepared


def run(client: Client, code: str, namespace: dict[str, Any] | None = None
        ) -> tuple[TaskRecord, PreparedTask]:
    """The cell run to its end: its final record, and the task as prepared."""
    record, prepared = submit(client, code, namespace)
    for _ in client.follow(record):
        pass
    record = client.store.get(record.id)
    settled(record.remote_dir)
    return record, prepared


def load(record: TaskRecord, namespace: dict[str, Any] | None = None,
         originals: dict[str, Any] | None = None) -> TaskResult:
    """What the kernel reads back, as `Client.result` reads it on this machine: in place in
    the host's task directory, the objects sent resolved in `originals` or the local copy."""
    return load_result(TaskPaths(record.remote_dir), record.id, record.host,
                       namespace=namespace, originals=originals,
                       inputs=TaskPaths(record.local_dir).inputs)


# -- what a completed cell leaves ------------------------------------------------------------

def test_the_names_the_cell_binds_imports_and_deletes(client: Client) -> None:
    ns: dict[str, Any] = {"offset": 10, "scratch": "tmp"}
    record, prepared = run(client, """\
        import json as j
        scale = 3
        table = {"a": [1, 2], "b": (3.5, None)}
        def scaled(x):
            return x * scale * offset
        del scratch
        """, ns)
    result = load(record, ns, prepared.values)
    assert result.state == State.COMPLETED and result.error is None and result.reason is None
    assert sorted(result.values) == ["j", "scale", "scaled", "table"]
    assert result.values["j"] is json  # a module comes back by name, imported here
    assert result.values["table"] == {"a": [1, 2], "b": (3.5, None)}
    assert result.deleted == ["scratch"] and result.skipped == {} and result.value is None
    # a function the cell defined lives in the notebook's namespace, as a local one would
    assert result.values["scaled"].__globals__ is ns
    assert result.apply(ns) == ["j", "scale", "scaled", "table"]
    assert "scratch" not in ns and ns["scaled"](2) == 60
    ns["offset"] = 1
    assert ns["scaled"](2) == 6


def test_an_input_changed_in_place_changes_the_notebooks_object(client: Client) -> None:
    data = [3, 1, 2]
    ns: dict[str, Any] = {"data": data, "view": data}
    record, prepared = run(client, "data.sort()\nsize = len(data)", ns)
    result = load(record, ns, prepared.values)
    # both notebook names of the object were sent, and both see the change
    assert result.values == {"size": 3}
    assert result.mutated == {"data": [1, 2, 3], "view": [1, 2, 3]}
    assert result.changed == ["data", "size", "view"]
    result.apply(ns)
    assert ns["data"] is data and data == [1, 2, 3] and ns["view"] is data
    assert result.rebound == {}


def test_an_object_the_cell_stores_away_is_the_notebooks_own(client: Client) -> None:
    items = [1, 2]
    record, prepared = run(client, "registry = {'items': items}", {"items": items})
    result = load(record, originals=prepared.values)
    assert result.values["registry"]["items"] is items and result.skipped == {}


def test_after_a_restart_the_objects_sent_come_from_the_local_copy(client: Client) -> None:
    items = [1, 2]
    record, _ = run(client, "registry = {'items': items}", {"items": items})
    assert TaskPaths(record.local_dir).inputs.is_file()
    result = load(record)
    assert result.skipped == {}
    assert result.values["registry"]["items"] == [1, 2]


def test_a_name_bound_to_a_sent_object_is_the_notebooks_object(client: Client) -> None:
    data = [1, 2, 3]
    record, prepared = run(client, "alias = data", {"data": data})
    assert load(record, originals=prepared.values).values["alias"] is data


@pytest.mark.parametrize("code, value", [
    ("x = 21\nx * 2", 42),
    ("x = 21\nx * 2  # a comment after the expression", 42),
    ("x = {'k': [1]}\nx['k']", [1]),
])
def test_the_last_expression_is_the_cells_value(client: Client, code: str, value: Any) -> None:
    record, _ = run(client, code)
    result = client.result(record)
    assert result.value is not None and result.value.bundle is None
    assert result.value.obj == value
    assert result.values["x"] is not None and result.error is None


@pytest.mark.parametrize("code", [
    "x = 2",  # the cell ends with a statement
    "x = 2\nx * 2;",  # a semicolon hides the value, as in IPython
    "print('shown, not returned')",  # the expression's value is None
])
def test_a_cell_without_a_value(client: Client, code: str) -> None:
    record, _ = run(client, code)
    result = client.result(record)
    assert result.state == State.COMPLETED and result.value is None


def test_a_value_that_cannot_be_loaded_here_is_shown_as_such(client: Client,
                                                             tmp_path: Path) -> None:
    """The cell's value is of a class only the host has: the other results still load, and
    the value is a text saying why instead of an exception from the unpickler."""
    only_there = tmp_path / "hostside"
    only_there.mkdir()
    (only_there / "hostthing.py").write_text("class Gadget:\n    pass\n")
    record, _ = run(client, f"""\
        import sys
        sys.path.insert(0, {str(only_there)!r})
        import hostthing
        n = 5
        hostthing.Gadget()
        """)
    result = client.result(record)
    assert result.error is None and result.values["n"] == 5
    assert result.value is not None and result.value.obj is None
    text = (result.value.bundle or {})["text/plain"]
    assert text.startswith("<a displayed object could not be loaded here: ")
    assert "hostthing" in text


# -- what the cell raised ----------------------------------------------------------------------

MY_ERROR = textwrap.dedent("""\
    class MyError(Exception):
        def __init__(self, code):
            super().__init__(f"code {code}")
            self.code = code
    """)


@pytest.mark.parametrize("code, kind, message", [
    ("raise ValueError('bad input 7')", ValueError, "bad input 7"),
    ("d = {}\nd['k']", KeyError, "'k'"),  # printed as a local KeyError is
    ("open('/nonexistent/dir/x')", FileNotFoundError,
     "[Errno 2] No such file or directory: '/nonexistent/dir/x'"),
    ("try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    raise RuntimeError('wrapped') from e",
     RuntimeError, "wrapped"),
    ("raise SystemExit(3)", SystemExit, "3"),
])
def test_an_exception_comes_back_as_its_own_type(client: Client, code: str, kind: type,
                                                 message: str) -> None:
    record, _ = run(client, code)
    assert record.state == State.FAILED
    result = client.result(record)
    error = result.error
    assert result.state == State.FAILED
    assert result.reason == f"{kind.__name__}: {message}"
    # `except ValueError:` after the cell catches it, as it would catch a local one
    assert isinstance(error, kind) and isinstance(error, RemoteTaskError)
    assert type(error).__name__ == kind.__name__ and str(error) == message
    assert error.remote_type == kind.__name__ and error.task_id == record.id
    trace = error.remote_traceback
    assert trace.startswith("Traceback (most recent call last):\n")
    assert f'File "<remote-cell {record.id[:8]}>", line ' in trace
    assert trace.endswith(f"{kind.__name__}: {message}\n")


def test_a_chained_exception_keeps_its_cause_in_the_traceback(client: Client) -> None:
    record, _ = run(client, """\
        try:
            {}["missing"]
        except KeyError as e:
            raise LookupError("not found") from e
        """)
    trace = client.result(record).error.remote_traceback  # type: ignore[union-attr]
    assert "KeyError: 'missing'" in trace
    assert "The above exception was the direct cause of the following exception" in trace
    assert trace.index("KeyError") < trace.index("LookupError: not found")


def test_an_exception_class_of_the_cell_is_rebuilt_with_its_attributes(client: Client) -> None:
    record, _ = run(client, MY_ERROR + "before = 1\nraise MyError(7)\n")
    result = client.result(record)
    error = result.error
    cls = result.values["MyError"]  # the class the cell defined comes back too
    assert isinstance(error, cls) and isinstance(error, RemoteTaskError)
    assert error.args == ("code 7",) and error.code == 7  # type: ignore[union-attr]
    assert str(error) == "code 7" and error.remote_type == "MyError"
    assert result.values["before"] == 1  # what the cell bound before raising still lands


def test_an_exception_that_cannot_travel_is_rebuilt_from_its_description(client: Client
                                                                         ) -> None:
    """The exception object holds a lock: it cannot be pickled on the host, so the kernel
    builds one of the same type from error.json, saying where it was raised."""
    record, _ = run(client, """\
        import threading
        error = ValueError("holds a lock")
        error.lock = threading.Lock()
        kept = 1
        raise error
        """)
    result = client.result(record)
    error = result.error
    assert isinstance(error, ValueError) and isinstance(error, RemoteTaskError)
    assert str(error) == f"holds a lock (raised in task {record.id} on localhost)"
    assert error.remote_traceback.endswith("ValueError: holds a lock\n")
    assert result.values["kept"] == 1
    assert "error" in result.skipped  # the name bound to it could not come back either


def test_an_exception_that_cannot_travel_is_not_listed_by_an_internal_name(client: Client
                                                                            ) -> None:
    record, _ = run(client, """\
        import threading
        error = ValueError("holds a lock")
        error.lock = threading.Lock()
        raise error
        """)
    skipped = client.result(record).skipped
    assert not any(name.startswith("<") for name in skipped), skipped


# -- tasks that ended without a result -----------------------------------------------------------

def test_a_killed_task_is_a_failure_that_says_so(client: Client) -> None:
    record, _ = submit(client, "x = 1\nimport time\ntime.sleep(60)")
    paths = TaskPaths(record.remote_dir)
    assert wait_for(lambda: read_state(paths)["state"] == State.RUNNING, timeout=10)
    assert wait_for(lambda: read_json(paths.pids) is not None, timeout=10)
    os.kill(read_json(paths.pids)["runner"], signal.SIGKILL)  # the OOM killer, say
    assert wait_for(lambda: client.status([record.id])[0].final, timeout=10)
    result = client.result(client.store.get(record.id))
    assert result.state == State.FAILED and result.reason == "killed by signal SIGKILL"
    assert type(result.error) is TaskFailedError
    assert str(result.error) == f"Task {record.id} on localhost failed: killed by signal SIGKILL"
    assert result.error.remote_type == State.FAILED and result.error.task_id == record.id
    assert result.values == {} and result.value is None and result.entries == []


def test_a_cancelled_task_is_a_failure_that_says_so(client: Client) -> None:
    record, _ = submit(client, "x = 1\nimport time\ntime.sleep(60)")
    paths = TaskPaths(record.remote_dir)
    assert wait_for(lambda: read_state(paths)["state"] == State.RUNNING, timeout=10)
    assert client.kill([client.store.get(record.id)]) == {record.id: "cancelling"}
    assert wait_for(lambda: client.status([record.id])[0].final, timeout=10)
    result = client.result(client.store.get(record.id))
    assert result.state == State.CANCELLED and result.reason == "cancelled by the user"
    assert type(result.error) is TaskFailedError
    assert str(result.error) == f"Task {record.id} on localhost cancelled: cancelled by the user"
    assert result.error.remote_type == State.CANCELLED
    assert result.values == {}  # x was bound, but a cancelled cell returns nothing


# -- damaged files -------------------------------------------------------------------------------

def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def scramble_start(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(b"\0" * 8 + data[8:])


@pytest.mark.parametrize("damage, expected", [
    (lambda p: p.result.write_text("[]"), "result.json does not hold what a task writes there"),
    (lambda p: p.outputs.unlink(), "outputs.rmns is missing"),
    (lambda p: append(p.outputs, b"tail"), "outputs.rmns is damaged"),
    (lambda p: scramble_start(p.outputs), "outputs.rmns is damaged"),
    (lambda p: p.displays.write_bytes(p.displays.read_bytes()[:30]),
     "displays.rmns is damaged"),
    (lambda p: p.state.write_text('"completed"'),
     "state.json does not hold what a task writes there"),
])
def test_a_damaged_file_is_an_error_that_names_it(client: Client,
                                                  damage: Callable[[TaskPaths], None],
                                                  expected: str) -> None:
    record, _ = run(client, "value = [1, 2, 3]\nvalue")
    paths = TaskPaths(record.remote_dir)
    damage(paths)
    result = client.result(record)
    assert result.state == State.FAILED
    assert isinstance(result.error, TaskFailedError)
    assert result.error.remote_type == "damaged results"
    message = str(result.error)
    assert f"{paths.root}/{expected}" in message
    assert f"Task {record.id} on localhost left results that cannot be read" in message
    assert f"%remote_log {record.id}" in message and "--rerun" in message


def test_a_result_file_that_is_not_a_file(client: Client) -> None:
    """result.json replaced by a folder: read where it lies, a damaged result naming it; the
    kernel's own read on this machine refuses the task directory first, as something another
    user may have put there, and says how to move it aside."""
    record, _ = run(client, "value = 1")
    paths = TaskPaths(record.remote_dir)
    paths.result.unlink()
    paths.result.mkdir()
    result = load(record)
    assert isinstance(result.error, TaskFailedError)
    assert f"{paths.result} cannot be read (Is a directory)" in str(result.error)
    with pytest.raises(TransportError) as refused:
        client.result(record)
    assert f"{paths.result}, in the work directory of localhost" in str(refused.value)
    assert f"mv {paths.result} {paths.result}.suspect" in str(refused.value)


def test_a_damaged_error_description_still_says_what_failed(client: Client) -> None:
    """error.json cut short: the exception's type is lost, its words are still in the
    task's state; a failure that says so, not a crash while reading it."""
    record, _ = run(client, "raise ValueError('bad input')")
    paths = TaskPaths(record.remote_dir)
    paths.error.write_bytes(paths.error.read_bytes()[:10])
    result = client.result(record)
    assert type(result.error) is TaskFailedError
    assert str(result.error) == f"Task {record.id} on localhost failed: ValueError: bad input"


def test_a_state_of_the_wrong_shape_is_an_error_that_names_it(client: Client) -> None:
    record, _ = run(client, "raise ValueError('bad input')")
    paths = TaskPaths(record.remote_dir)
    paths.state.write_text('{"reason": "no state"}')
    result = client.result(record)
    assert isinstance(result.error, TaskFailedError) and "state.json" in str(result.error)


@pytest.mark.parametrize("text", ["[]", '{"message": "no type"}', '{"type": 1, "message": ""}'])
def test_an_error_description_of_the_wrong_shape_is_read_as_a_damaged_one(
        client: Client, text: str) -> None:
    """Valid JSON that is not what the runner writes: as when it is cut short, the failure
    says what the task's state says, rather than a crash while reading it."""
    record, _ = run(client, "raise ValueError('bad input')")
    TaskPaths(record.remote_dir).error.write_text(text)
    result = client.result(record)
    assert type(result.error) is TaskFailedError
    assert str(result.error) == f"Task {record.id} on localhost failed: ValueError: bad input"


def test_a_damaged_local_copy_of_the_inputs_loses_only_what_refers_to_it(client: Client
                                                                         ) -> None:
    """After a restart, objects the task refers to by name are read from the kernel's local
    copy of its inputs: if that copy is damaged, the outputs that need it are reported by
    name, with why, and the others still land."""
    items = [1, 2]
    record, _ = run(client, "registry = {'items': items}\ncount = len(items)", {"items": items})
    inputs = TaskPaths(record.local_dir).inputs
    inputs.write_bytes(inputs.read_bytes()[:20])
    result = client.result(record)
    assert result.error is None and result.values == {"count": 2}
    why = result.skipped["registry"]
    assert why.startswith("cannot be loaded here: ")
    assert f"%remote_fetch {record.id}" in why
    # the kernel that still holds the objects sent does not need the copy
    assert load(record, originals={"items": items}).values["registry"]["items"] is items
