"""What a task changed in its inputs, and how objects keep their identity across the wire."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from remote_magic.host.changes import InputWatch, mapped_regions
from remote_magic.wire.serialization import IN_PLACE, dump_namespace, load_namespace


def loaded(tmp_path: Path, values: dict[str, Any], ns: dict[str, Any] | None = None
           ) -> tuple[dict[str, Any], str]:
    path = tmp_path / "inputs.rmns"
    dump_namespace(values, path)
    return load_namespace(path, namespace=ns), str(path)


def test_unchanged_inputs_are_not_reported(tmp_path: Path) -> None:
    ns: dict[str, Any] = {}
    inputs, path = loaded(tmp_path, {"L": [3, 1, 2], "a": np.arange(1000.0), "n": 5,
                                     "d": {"k": [1]}}, ns)
    watch = InputWatch(inputs, path, ns)
    _ = inputs["a"].sum(), sorted(inputs["L"]), inputs["d"]["k"][0]  # reading is not changing
    assert watch.changed(inputs) == []


def test_in_place_changes_are_reported(tmp_path: Path) -> None:
    ns: dict[str, Any] = {}
    inputs, path = loaded(tmp_path, {"L": [3, 1, 2], "a": np.zeros(100_000),
                                     "b": np.zeros(10), "d": {"k": [1]}, "s": {1}}, ns)
    watch = InputWatch(inputs, path, ns)
    inputs["L"].sort()
    inputs["a"][50_000] = 1.0  # one page of a mapped buffer written
    inputs["d"]["k"].append(2)  # a change deep inside
    assert sorted(watch.changed(inputs)) == ["L", "a", "d"]


def test_buffers_of_the_inputs_file_are_checked_by_their_pages_not_hashed(tmp_path: Path
                                                                          ) -> None:
    ns: dict[str, Any] = {}
    inputs, path = loaded(tmp_path, {"a": np.ones(1 << 20)}, ns)
    assert mapped_regions(path), "the inputs file is memory-mapped"
    watch = InputWatch(inputs, path, ns)
    assert watch.spans == [] or all(size > 0 for _, size in watch.spans)
    assert watch.changed(inputs) == []
    assert watch.spans and watch.spans[0][1] == 8 << 20  # located in the map, not hashed


def test_a_rebound_name_does_not_hide_a_change_to_the_object_sent(tmp_path: Path) -> None:
    ns: dict[str, Any] = {}
    inputs, path = loaded(tmp_path, {"L": [2, 1]}, ns)
    watch = InputWatch(inputs, path, ns)
    sent = dict(inputs)
    sent["L"].sort()
    inputs["L"] = [9]  # the cell also rebinds the name; the object sent changed all the same
    assert watch.changed(sent) == ["L"]


def test_functions_live_in_the_namespace_that_receives_them(tmp_path: Path) -> None:
    notebook: dict[str, Any] = {"__builtins__": __builtins__, "scale": 2}
    exec("def f():\n    return scale * 2\n", notebook)
    path = tmp_path / "x.rmns"
    dump_namespace({"f": notebook["f"]}, path, namespace=notebook)
    task: dict[str, Any] = {"__builtins__": __builtins__}
    f = load_namespace(path, namespace=task)["f"]
    assert f.__globals__ is task and task["scale"] == 2  # what it needs came along
    task["scale"] = 10
    assert f() == 20  # a global rebound in the task is seen
    back = tmp_path / "y.rmns"
    dump_namespace({"g": f}, back, namespace=task, send_globals=False)
    kernel: dict[str, Any] = {"__builtins__": __builtins__, "scale": 7}
    g = load_namespace(back, namespace=kernel)["g"]
    assert g.__globals__ is kernel and g() == 14 and kernel["__builtins__"] is __builtins__
    assert sorted(kernel) == ["__builtins__", "scale"]  # nothing of the task's leaked in


def test_objects_sent_come_back_as_the_senders_own(tmp_path: Path) -> None:
    data, other = [1, 2], {"k": 1}
    path = tmp_path / "x.rmns"
    result = dump_namespace({"holder": {"k": data}}, path,
                            aliases={"data": data, "other": other, "n": 5})
    assert result.aliased == ("data",)  # reachable from what was sent: sent too, for free
    task = load_namespace(path)
    assert task["holder"]["k"] is task["data"]
    back = tmp_path / "y.rmns"
    dump_namespace({"new": {"x": task["data"]}, "alias": task["data"],
                    IN_PLACE + "data": task["data"]}, back, refs={id(task["data"]): "data"})
    got = load_namespace(back, refs={"data": data})
    assert got["new"]["x"] is data  # a reference to the kernel's own list
    assert got["alias"] is data  # `alias = data` in the cell: the kernel's own list too
    # the value of an in-place entry is its content: what the kernel's list must become
    assert got[IN_PLACE + "data"] is not data and got[IN_PLACE + "data"] == data


def test_a_task_that_changes_nothing_costs_no_full_read_of_a_large_input(tmp_path: Path
                                                                         ) -> None:
    # In a fresh process: how much of a 256 MiB input the check reads (resident pages).
    dump_namespace({"big": np.ones(32 << 20)}, tmp_path / "big.rmns")
    code = textwrap.dedent(f"""
        import resource, numpy as np
        from remote_magic.wire.serialization import load_namespace
        from remote_magic.host.changes import InputWatch
        ns = {{}}
        inputs = load_namespace({str(tmp_path / 'big.rmns')!r}, namespace=ns)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        watch = InputWatch(inputs, {str(tmp_path / 'big.rmns')!r}, ns)
        assert watch.changed(inputs) == []
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        """)
    grown_kib = int(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                   text=True, check=True).stdout)
    assert grown_kib < 64 * 1024, f"the check read {grown_kib} KiB of a 256 MiB input"


def test_values_that_hold_a_file_or_a_generator_travel_as_their_recipe(tmp_path: Path,
                                                                       monkeypatch: Any
                                                                       ) -> None:
    import matplotlib as mpl

    monkeypatch.chdir(tmp_path)
    np.savez("xy.npz", x=np.arange(3))

    @mpl.rc_context({"lines.linewidth": 3})
    def width() -> float:
        return mpl.rcParams["lines.linewidth"]

    path = tmp_path / "v.rmns"
    dump_namespace({"npz": np.load("xy.npz"), "width": width}, path)
    got = load_namespace(path)
    assert got["npz"]["x"].tolist() == [0, 1, 2]
    assert got["width"]() == 3.0 and mpl.rcParams["lines.linewidth"] != 3.0
