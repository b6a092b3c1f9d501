"""Reading results back: what the kernel adds to a remote traceback, and results that are
damaged or cannot all be loaded here."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers.hosts import settled

from remote_magic.client.core import Client
from remote_magic.client.prepare import TaskOptions, prepare_cell
from remote_magic.client.results import with_local_source
from remote_magic.errors import TaskFailedError
from remote_magic.wire.taskdir import TaskPaths


def test_missing_source_lines_come_from_the_local_file(tmp_path: Path) -> None:
    helpers = tmp_path / "helpers.py"
    helpers.write_text("def fit(x):\n    return 1 / x\n")
    remote = ("Traceback (most recent call last):\n"
              '  File "<remote-cell ab12>", line 1, in <module>\n'
              "    fit(0)\n"
              f'  File "{helpers}", line 2, in fit\n'
              '  File "/nowhere/gone.py", line 9, in lost\n'
              "ZeroDivisionError: division by zero\n")
    filled = with_local_source(remote)
    assert filled == remote.replace(
        'line 2, in fit\n', 'line 2, in fit\n    return 1 / x\n')


def test_lines_the_host_showed_are_kept(tmp_path: Path) -> None:
    helpers = tmp_path / "helpers.py"
    helpers.write_text("def fit(x):\n    return 2 / x\n")
    remote = f'  File "{helpers}", line 2, in fit\n    return 1 / x\n'
    assert with_local_source(remote) == remote


# -- damaged or partly unloadable results ------------------------------------------------------

def run(client: Client, code: str, ns: dict[str, Any]) -> Any:
    options = TaskOptions(rerun=True)
    prepared = prepare_cell(textwrap.dedent(code), ns, client.host("localhost"), options)
    record = client.submit(prepared).record
    for update in client.follow(record):
        if update.final:
            break
    record = client.store.get(record.id)
    settled(record.remote_dir)
    return record


@pytest.fixture
def client(home: Path) -> Any:
    c = Client()
    yield c
    c.close()


def test_an_output_that_cannot_load_here_does_not_lose_the_others(client: Client,
                                                                   tmp_path: Path) -> None:
    only_there = tmp_path / "elsewhere"
    only_there.mkdir()
    (only_there / "hostonly.py").write_text("class Thing:\n    pass\n")
    record = run(client, f"""\
        import sys
        sys.path.insert(0, {str(only_there)!r})
        import hostonly
        thing = hostonly.Thing()
        kept = [1, 2]
        """, {})
    result = client.result(record)
    assert result.error is None and result.values["kept"] == [1, 2]
    assert "thing" not in result.values
    why = result.skipped["thing"]
    assert "ModuleNotFoundError" in why and f"%remote_fetch {record.id}" in why


@pytest.mark.parametrize("damage, expected", [
    (lambda p: p.result.unlink(), "result.json is missing"),
    (lambda p: p.result.write_text("{not json"), "result.json is not valid JSON"),
    (lambda p: p.outputs.write_bytes(p.outputs.read_bytes()[:40]), "outputs.rmns is damaged"),
    (lambda p: p.state.write_text("\x00garbage"), "state.json is not valid JSON"),
])
def test_damaged_results_are_an_error_that_names_the_file(client: Client, damage: Any,
                                                          expected: str) -> None:
    record = run(client, "value = 42", {})
    damage(TaskPaths(record.remote_dir))
    result = client.result(record)
    assert isinstance(result.error, TaskFailedError)
    message = str(result.error)
    assert expected in message and record.id in message and "--rerun" in message
    assert result.values == {}
