"""The kernel side of sweeps on its own: expanding `--map` values, reading `--map` out of a
magic's line, gathering results, the store's sweeps, a sweep's status row, and a whole small
sweep on localhost through `Client` (staged, run, fetched, purged)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from remote_magic.client.core import Client
from remote_magic.client.prepare import TaskOptions
from remote_magic.client.store import SweepRecord, TaskRecord, TaskStore
from remote_magic.client.sweeps import check_keys, expand, gather, label, prepare_sweep
from remote_magic.errors import OptionError, SweepFailedError
from remote_magic.notebook.arguments import take_maps
from remote_magic.notebook.views import outcome_lines, status_table, sweep_row


def test_expand_makes_a_product_in_loop_order_or_pairs() -> None:
    assert expand({"a": [1, 2], "b": "xy" and ["x", "y"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    assert expand({"a": range(3), "b": (10, 20, 30)}, zipped=True) == [
        {"a": 0, "b": 10}, {"a": 1, "b": 20}, {"a": 2, "b": 30}]
    assert expand({"g": (i * i for i in range(3))}) == [{"g": 0}, {"g": 1}, {"g": 4}]
    assert label({"lr": 0.1, "name": "x" * 100}).startswith("lr=0.1, name='xxx")


@pytest.mark.parametrize("values, zipped, words", [
    ({"a": 5}, False, "gives a int, not a sequence"),
    ({"a": "abc"}, False, "letter by letter"),
    ({"a": {"k": 1}}, False, "gives a dict"),
    ({"a": []}, False, "no values"),
    ({"a": [1], "b": [1, 2]}, True, "a: 1, b: 2"),
    ({"a": range(400), "b": range(400)}, False, "160,000 elements, over the limit"),
    ({}, False, "at least one"),
])
def test_expand_refuses_what_cannot_be_swept(values: dict, zipped: bool, words: str) -> None:
    with pytest.raises(OptionError, match=words):
        expand(values, zipped)


def test_keys_must_hash_and_differ() -> None:
    check_keys([{"a": 1}, {"a": 2}])
    with pytest.raises(OptionError, match="not hashable"):
        check_keys([{"a": [1]}])
    with pytest.raises(OptionError, match="repeat"):
        check_keys([{"a": 1, "b": 2}, {"a": 1, "b": 2}])


def test_map_options_are_read_as_python_not_shell_words() -> None:
    assert take_maps('-q hpc --map x=[1, 2, "a b"] --walltime 1:00:00') == (
        "-q hpc  --walltime 1:00:00", [("x", '[1, 2, "a b"]')])
    assert take_maps("--map=a=f(-1) --map 'b = range(3)' --zip")[1] == [
        ("a", "f(-1)"), ("b", "range(3)")]
    assert take_maps("--name x --nowait") == ("--name x --nowait", [])
    for bad, words in [("--map 3=[1]", "write NAME=EXPR"), ("--map a=[1,", "not a Python"),
                       ("--map 'a=[1]", "never closed")]:
        with pytest.raises(OptionError, match=words):
            take_maps(bad)


def test_gather_lists_values_in_order_with_failures_in_place() -> None:
    class Done:
        def __init__(self, values: dict, error: BaseException | None = None) -> None:
            self.values, self.error = values, error

    boom = ValueError("no")
    elements = [("completed", Done({"y": 1, "m": math})), ("failed", Done({}, boom)),
                ("running", None), ("completed", Done({"m": math}))]
    result = gather("s1", ["k=0", "k=1", "k=2", "k=3"], ["y", "m"], elements)
    assert result.values == {"y": [1, boom, None, None], "m": math}  # a module binds once
    assert result.errors == {1: boom}
    assert result.summary() == "sweep s1: 4 elements, 2 completed, 1 failed, 1 running"
    error = result.error()
    assert isinstance(error, SweepFailedError) and "1 (k=1): ValueError: no" in str(error)
    keyed = gather("s1", ["a", "b"], ["y", "m"], elements[:1] + elements[3:], keys=[0, 3])
    assert keyed.values == {"y": {0: 1, 3: None}, "m": math}


def test_store_keeps_sweeps_and_their_elements(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "s.sqlite")
    records = [TaskRecord(f"{i:016x}", "h", "hpc", sweep="ab" * 8, sweep_index=i)
               for i in range(3)]
    store.add_many(records, SweepRecord("ab" * 8, "hpc", [r.id for r in records],
                                        ["i=0", "i=1", "i=2"], ["i"], ["y"]))
    assert store.sweep("ab" * 8).labels == ["i=0", "i=1", "i=2"]
    assert [r.id for r in store.many([records[2].id, "f" * 16, records[0].id])] == \
        [records[2].id, records[0].id]
    assert store.sweep_ids("abab") == ["ab" * 8] and store.sweep("cd" * 8) is None


def test_a_sweep_is_one_status_row_and_one_line_per_outcome() -> None:
    now = time.time()
    elements = [TaskRecord(f"{i:016x}", "h", "hpc", state=s, sweep="s1", job_id=f"12_{i}",
                           name="fit", started=now - 5, finished=now if s != "running" else None)
                for i, s in enumerate(["completed", "running", "failed", "completed"])]
    row = sweep_row("s1", elements)
    assert row[:5] == ["s1", "fit (sweep of 4)", "hpc", "12", "running"]
    assert row[7] == "3/4 done (1 running, 1 failed)"
    other = TaskRecord("9" * 16, "h", "hpc", state="completed")
    table = status_table([elements[0], other, *elements[1:]], {"s1": elements})["text/plain"]
    assert len(table.splitlines()) == 3 and "sweep of 4" in table
    assert outcome_lines({e.id: "cancelling" for e in elements[1:]} | {other.id: "done"},
                         [*elements, other]) == [f"{other.id}: done",
                                                 "sweep s1: 3 elements cancelling"]


def test_a_sweep_on_localhost_runs_fetches_and_purges(home: Path) -> None:
    client = Client()
    try:
        host = client.host("localhost")
        sweep = prepare_sweep("y = base * k\nif k == 2:\n    raise KeyError(k)",
                              {"base": 10}, host, TaskOptions(), expand({"k": range(4)}))
        submission = client.submit_sweep(sweep)
        saved = submission.sweep
        for _ in client.follow_sweep(saved):
            pass
        result = client.sweep_result(saved)
        assert result.values["y"][:2] == [0, 10] and result.values["y"][3] == 30
        assert isinstance(result.errors[2], KeyError)
        assert client.find_any(saved.id[:6]).id == saved.id  # a sweep's id, like a task's
        assert [r.id for r in client.records_for([saved.id])] == saved.elements
        keyed = client.sweep_result(saved, keyed=True)  # keys read back from the inputs
        assert keyed.values["y"][3] == 30
        again = client.submit_sweep(prepare_sweep(
            "y = base * k\nif k == 2:\n    raise KeyError(k)", {"base": 10}, host,
            TaskOptions(), expand({"k": range(4)})))
        assert again.reused == 3  # the failed one runs again
        for _ in client.follow_sweep(again.sweep):
            pass
        outcome = client.purge(client.records_for([saved.id]))
        assert set(outcome.values()) == {"removed"}
        assert client.store.sweep(saved.id) is None
        assert not Path(saved.options["local"]).exists()
    finally:
        client.close()
