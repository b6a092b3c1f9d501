"""Tests for the namespace container (remote_magic.wire.serialization)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import threading
from fractions import Fraction
from pathlib import Path

import pytest
from helpers import REPO

from remote_magic.errors import SerializationError
from remote_magic.wire.serialization import (
    ALIGNMENT,
    MAGIC,
    DumpResult,
    dump_namespace,
    load_namespace,
    pickle_namespace,
    read_names,
)

np = pytest.importorskip("numpy")

MB = 1 << 20


def round_trip(tmp_path: Path, values: dict, **kwargs) -> dict:
    path = tmp_path / "ns.rmns"
    dump_namespace(values, path, **kwargs)
    return load_namespace(path)


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that can import remote_magic but not this test."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=True)


def header_of(path: Path) -> tuple[dict, int]:
    raw = path.read_bytes()
    _, _, length = struct.unpack_from("<8sII", raw)
    return json.loads(raw[16:16 + length]), 16 + length


# --- plain Python values -------------------------------------------------------------------


def test_builtins_and_nested_containers(tmp_path):
    values = {
        "i": 42, "big": 3**200, "f": 2.5, "c": 1 - 2j, "s": "grüße ☃", "b": b"\x00\xff" * 10,
        "ba": bytearray(b"mutable"), "none": None, "t": True, "tup": (1, (2, (3,))),
        "st": {1, 2, 3}, "fs": frozenset("abc"), "r": range(2, 20, 3), "sl": slice(1, None, 2),
        "e": ..., "frac": Fraction(1, 3),
        "nested": {"a": [1, {"b": (2, [3, {4: "five"}])}], ("k", 1): {None: []}},
        "big_bytes": os.urandom(3 * MB),
    }
    loaded = round_trip(tmp_path, values)
    assert list(loaded) == list(values)
    for name, value in values.items():
        assert loaded[name] == value, name
        assert type(loaded[name]) is type(value), name


def test_functions_classes_and_lambdas_round_trip(tmp_path):
    factor = 3

    def scale(x):
        return x * factor

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

        def norm2(self):
            return self.x**2 + self.y**2

    loaded = round_trip(tmp_path, {"scale": scale, "Point": Point, "p": Point(3, 4),
                                   "square": lambda v: v * v})
    assert loaded["scale"](2) == 6
    assert loaded["square"](7) == 49
    assert loaded["p"].norm2() == 25
    assert isinstance(loaded["p"], loaded["Point"])  # the class was shared, not pickled twice
    assert loaded["Point"](1, 1).norm2() == 2


def test_functions_travel_by_value_to_a_process_without_this_module(tmp_path):
    offset = 10

    def shift(values):
        return [v + offset for v in values]

    class Box:
        def __init__(self, content):
            self.content = content

    path = tmp_path / "fn.rmns"
    dump_namespace({"shift": shift, "box": Box([1, 2]), "arr": np.arange(4)}, path)
    out = run_python(f"""
        import sys
        from remote_magic.wire.serialization import load_namespace
        assert "test_serialization" not in sys.modules
        ns = load_namespace({str(path)!r})
        print(ns["shift"](ns["box"].content), type(ns["box"]).__name__, ns["arr"].sum())
    """, cwd=tmp_path)
    assert out.stdout.split() == ["[11,", "12]", "Box", "6"]


def test_runner_side_import_stays_light(tmp_path):
    out = run_python("""
        import sys
        import remote_magic.wire.serialization
        print(sorted(m for m in ("numpy", "cloudpickle") if m in sys.modules))
    """, cwd=tmp_path)
    assert out.stdout.strip() == "[]"


# --- numpy ----------------------------------------------------------------------------------


def test_numpy_dtypes_layouts_and_writability(tmp_path):
    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    values = {
        "f64": base,
        "i32": np.arange(-50, 50, dtype=np.int32),
        "u8": np.frombuffer(os.urandom(1000), dtype=np.uint8).copy(),
        "c128": np.array([1 + 2j, -3j]),
        "bool": np.array([True, False, True]),
        "dt": np.array(["2024-01-01", "2025-06-30"], dtype="datetime64[D]"),
        "rec": np.array([(1, 2.5, b"ab")], dtype=[("a", "i4"), ("b", "f8"), ("c", "S2")]),
        "fortran": np.asfortranarray(base),
        "transposed": base.T,
        "strided": base[::2, 1::3],
        "zero_d": np.array(7.25),
        "empty": np.array([], dtype=np.float32),
        "empty_2d": np.zeros((3, 0), dtype=np.int16),
        "objects": np.array([{"x": 1}, None], dtype=object),
    }
    loaded = round_trip(tmp_path, values)
    for name, value in values.items():
        got = loaded[name]
        assert got.dtype == value.dtype and got.shape == value.shape, name
        np.testing.assert_array_equal(got, value, err_msg=name)
        assert got.flags.writeable, name
    assert loaded["fortran"].flags.f_contiguous
    # Out-of-band buffers land on 64-byte boundaries of the map.
    for name in ("f64", "i32", "u8", "c128", "fortran"):
        assert loaded[name].ctypes.data % ALIGNMENT == 0, name
    loaded["strided"][0, 0] = -1.0
    loaded["zero_d"][()] = 1.0
    assert values["strided"][0, 0] == 1.0 and values["zero_d"] == 7.25


def test_read_only_array_stays_read_only(tmp_path):
    frozen = np.arange(10)
    frozen.flags.writeable = False
    assert not round_trip(tmp_path, {"frozen": frozen})["frozen"].flags.writeable


def test_large_array_round_trip_is_copy_on_write(tmp_path):
    big = np.arange(200 * MB // 8, dtype=np.int64)  # 200 MB
    path = tmp_path / "big.rmns"
    try:
        result = dump_namespace({"big": big, "small": np.ones(3, dtype=np.float32)}, path)
        assert big.nbytes < result.size < big.nbytes + 64 * 1024
        loaded = load_namespace(path)["big"]
        assert loaded.flags.writeable and loaded.ctypes.data % ALIGNMENT == 0
        assert np.array_equal(loaded, big)
        loaded[:1000] = -1  # private map: the file keeps the original bytes
        assert load_namespace(path)["big"][:1000].tolist() == list(range(1000))
        del loaded
    finally:
        path.unlink(missing_ok=True)


def test_shared_objects_stay_shared(tmp_path):
    array = np.arange(1_000_000, dtype=np.float64)
    items = [1, [2, 3]]
    values = {"a": array, "b": array, "holder": {"arr": array, "items": items},
              "items": items, "items_too": items, "view": array[10:20]}
    path = tmp_path / "shared.rmns"
    result = dump_namespace(values, path)
    assert result.size < 1.1 * array.nbytes  # the array's bytes are stored once
    loaded = load_namespace(path)
    assert loaded["a"] is loaded["b"] is loaded["holder"]["arr"]
    assert loaded["items"] is loaded["items_too"] is loaded["holder"]["items"]
    assert loaded["items"][1] is loaded["holder"]["items"][1]
    loaded["a"][0] = 99.0
    assert loaded["b"][0] == 99.0
    # A view is stored as its own (small) array: sharing is by object, not by memory.
    np.testing.assert_array_equal(loaded["view"], np.arange(10, 20))


# --- unpicklable values ----------------------------------------------------------------------


def test_skip_mode_keeps_values_before_and_after(tmp_path):
    before = ["p", "q"]
    after = ["r", "s"]
    arr_before, arr_after = np.arange(5), np.arange(100, 110)
    values = {
        "before": before, "before_again": before, "arr_before": arr_before,
        # Its array (a buffer) and its bytes (written straight through by the pickler) are
        # out before the lock fails: both must be discarded.
        "half": [np.arange(1000, 2000), os.urandom(2 * MB), threading.Lock()],
        "lock": threading.Lock(),
        "after": after, "after_again": after, "arr_after": arr_after, "arr_twice": arr_after,
        "scalar": 3,
    }
    path = tmp_path / "skip.rmns"
    result = dump_namespace(values, path, on_error="skip")
    assert set(result.skipped) == {"half", "lock"}
    assert result.skipped["lock"].startswith("lock: ")
    assert "_thread.lock" in result.skipped["lock"]
    assert result.skipped["half"].startswith("list: ")
    assert read_names(path) == ["before", "before_again", "arr_before", "after",
                                "after_again", "arr_after", "arr_twice", "scalar"]
    header, _ = header_of(path)
    assert len(header["buffers"]) == 2  # the skipped value's buffer was discarded
    assert result.size < 64 * 1024

    loaded = load_namespace(path)
    assert list(loaded) == read_names(path)
    assert loaded["before"] == before and loaded["before_again"] is loaded["before"]
    # The pickler's memo restarts after a skip; unless the loader restarts its memo at the
    # same point, `after_again` would resolve to `before`.
    assert loaded["after"] == after and loaded["after_again"] is loaded["after"]
    np.testing.assert_array_equal(loaded["arr_before"], arr_before)
    np.testing.assert_array_equal(loaded["arr_after"], arr_after)
    assert loaded["arr_twice"] is loaded["arr_after"]
    assert loaded["scalar"] == 3


def test_skip_mode_first_and_only_values(tmp_path):
    path = tmp_path / "s.rmns"
    result = dump_namespace({"lock": threading.Lock(), "x": [1]}, path, on_error="skip")
    assert list(result.skipped) == ["lock"] and load_namespace(path) == {"x": [1]}
    result = dump_namespace({"lock": threading.Lock()}, path, on_error="skip")
    assert list(result.skipped) == ["lock"] and load_namespace(path) == {}


def test_raise_mode_names_variable_and_type_and_leaves_no_file(tmp_path):
    with pytest.raises(SerializationError) as info:
        dump_namespace({"ok": 1, "my_lock": threading.Lock(), "later": 2},
                       tmp_path / "out.rmns")
    message = str(info.value)
    assert "my_lock" in message and "_thread.lock" in message
    assert info.value.name == "my_lock"
    assert isinstance(info.value.__cause__, TypeError)
    assert os.listdir(tmp_path) == []


def test_bad_on_error_value(tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        dump_namespace({"x": 1}, tmp_path / "x.rmns", on_error="ignore")


# --- atomic writing --------------------------------------------------------------------------


def test_failed_dump_leaves_existing_file_untouched(tmp_path, monkeypatch):
    path = tmp_path / "ns.rmns"
    dump_namespace({"x": np.arange(10), "y": "good"}, path)
    good = path.read_bytes()

    with pytest.raises(SerializationError):
        dump_namespace({"x": threading.Lock()}, path)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["ns.rmns"]

    # A failure while writing (here: at the final rename) removes the temporary file.
    def failing_replace(src, dst):
        assert Path(src).parent == tmp_path and Path(src).exists()
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        dump_namespace({"x": np.zeros(1000)}, path)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["ns.rmns"]
    monkeypatch.undo()
    assert load_namespace(path)["y"] == "good"


# --- file format -----------------------------------------------------------------------------


def test_sha256_and_size_describe_the_file(tmp_path):
    path = tmp_path / "h.rmns"
    result = dump_namespace({"a": np.arange(12345, dtype=np.int16), "t": "text"}, path)
    assert isinstance(result, DumpResult) and result.skipped == {}
    data = path.read_bytes()
    assert result.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()


def test_layout_is_aligned_and_documented(tmp_path):
    path = tmp_path / "l.rmns"
    dump_namespace({"a": np.arange(3, dtype=np.int8), "b": np.arange(5.0), "c": [1]}, path)
    raw = path.read_bytes()
    assert raw.startswith(MAGIC)
    header, data_start = header_of(path)
    assert data_start % ALIGNMENT == 0
    assert [v["name"] for v in header["values"]] == ["a", "b", "c"]
    assert [v["buffers"] for v in header["values"]] == [1, 1, 0]
    for offset, _ in header["buffers"]:
        assert (data_start + offset) % ALIGNMENT == 0
    offset, length = header["buffers"][1]
    assert raw[data_start + offset:data_start + offset + length] == np.arange(5.0).tobytes()
    assert len(raw) == data_start + header["size"]


def test_empty_namespace_and_no_buffers(tmp_path):
    path = tmp_path / "empty.rmns"
    result = dump_namespace({}, path)
    assert result.size == os.path.getsize(path) and result.size % ALIGNMENT == 0
    assert load_namespace(path) == {} and read_names(path) == []

    dump_namespace({"x": 1, "empty_array": np.array([])}, path)
    loaded = load_namespace(path)
    assert loaded["x"] == 1 and loaded["empty_array"].shape == (0,)


def test_read_names_does_not_unpickle(tmp_path):
    def explode():
        raise RuntimeError("unpickled!")

    class Bomb:
        def __reduce__(self):
            return explode, ()

    path = tmp_path / "bomb.rmns"
    dump_namespace({"first": 1, "bomb": Bomb(), "last": 2}, path)
    assert read_names(path) == ["first", "bomb", "last"]
    with pytest.raises(RuntimeError, match="unpickled!"):
        load_namespace(path)


def test_names_must_be_strings(tmp_path):
    with pytest.raises(TypeError, match="names must be str"):
        dump_namespace({1: "x"}, tmp_path / "n.rmns")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("reader", [load_namespace, read_names])
def test_missing_and_foreign_files_are_rejected_clearly(tmp_path, reader):
    missing = tmp_path / "missing.rmns"
    with pytest.raises(ValueError, match="not a remote_magic namespace file") as info:
        reader(missing)
    assert str(missing) in str(info.value)

    for content in (b"", b"hello, world, this is a text file", pickle.dumps({"x": 1}),
                    MAGIC[:3] + b"xx"):
        path = tmp_path / "foreign.rmns"
        path.write_bytes(content)
        with pytest.raises(ValueError, match="not a remote_magic namespace file") as info:
            reader(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("reader", [load_namespace, read_names])
def test_truncated_files_are_rejected_clearly(tmp_path, reader):
    good = tmp_path / "good.rmns"
    dump_namespace({"a": np.arange(1000), "b": {"k": "v" * 100}}, good)
    raw = good.read_bytes()
    header, data_start = header_of(good)
    cut = tmp_path / "cut.rmns"
    for length in (5, 12, 40, data_start, data_start + 10, len(raw) - 1):
        cut.write_bytes(raw[:length])
        with pytest.raises(ValueError, match="truncated remote_magic namespace file") as info:
            reader(cut)
        assert str(cut) in str(info.value)


def test_other_corruption_is_rejected(tmp_path):
    good = tmp_path / "good.rmns"
    dump_namespace({"a": np.arange(100), "b": [1, 2, 3]}, good)
    raw = good.read_bytes()
    bad = tmp_path / "bad.rmns"

    bad.write_bytes(raw + b"\0" * 7)
    with pytest.raises(ValueError, match="unexpected bytes"):
        load_namespace(bad)

    bad.write_bytes(raw[:8] + struct.pack("<I", 99) + raw[12:])
    with pytest.raises(ValueError, match="format version 99"):
        load_namespace(bad)

    header_start = raw.index(b"{")
    bad.write_bytes(raw[:header_start] + b"!" + raw[header_start + 1:])
    with pytest.raises(ValueError, match="unreadable header"):
        load_namespace(bad)

    # A frame length that disagrees with the pickle inside it.
    header, data_start = header_of(good)
    header["values"][1]["length"] -= 1
    text = json.dumps(header).encode()
    text += b" " * (data_start - 16 - len(text))
    bad.write_bytes(raw[:16] + text + raw[data_start:])
    with pytest.raises(ValueError, match="variable 'b' is corrupt"):
        load_namespace(bad)


# --- memory ----------------------------------------------------------------------------------

MEMORY_PROBE = """
    import json, resource, sys, tracemalloc
    import numpy as np
    from remote_magic.wire.serialization import dump_namespace, load_namespace

    def peak_rss():
        # On Linux ru_maxrss survives fork + exec, so a child started by a big pytest process
        # begins at its parent's peak; VmHWM belongs to this process's own address space.
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    path, step, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    report = {}
    if step == "dump":
        array = np.arange(n, dtype=np.float64)
        before = peak_rss()
        tracemalloc.start()
        dump_namespace({"array": array, "again": array}, path)
        report["traced_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        report["rss_growth"] = peak_rss() - before
    else:
        before = peak_rss()
        tracemalloc.start()
        ns = load_namespace(path)
        report["traced_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        report["rss_growth"] = peak_rss() - before
        array = ns["array"]
        assert ns["again"] is array and array.flags.writeable
        assert array[-1] == n - 1 and array.sum() == n * (n - 1) // 2  # touches every page
        array *= 2  # copy-on-write of every page: this is the one copy we pay for
        assert array[-1] == 2 * (n - 1)
        report["rss_growth_touched"] = peak_rss() - before
    print(json.dumps(report))
"""


def test_dump_and_load_of_400mb_make_no_extra_copy(tmp_path):
    nbytes = 400 * MB
    path = tmp_path / "mem.rmns"
    script = textwrap.dedent(MEMORY_PROBE)
    args = [str(path), "", str(nbytes // 8)]

    def probe(step):
        args[1] = step
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        out = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120, check=True)
        return json.loads(out.stdout)

    try:
        dumped = probe("dump")
        assert os.path.getsize(path) < nbytes + MB
        loaded = probe("load")
    finally:
        path.unlink(missing_ok=True)
    print(f"400 MB array: dump {dumped}, load {loaded}")
    assert dumped["rss_growth"] < 0.05 * nbytes
    assert dumped["traced_peak"] < 0.05 * nbytes
    assert loaded["rss_growth"] < 0.05 * nbytes
    assert loaded["traced_peak"] < 0.05 * nbytes
    # After writing to every page: one private copy of the data, not two.
    assert loaded["rss_growth_touched"] < 1.2 * nbytes


def test_pickled_in_memory_gives_the_files_bytes_and_digest(tmp_path: Path) -> None:
    """What a transport sends from memory is byte for byte the file `dump_namespace` writes
    (so the host's copy loads); after `release` nothing more can be read from it."""
    values = {"big": np.arange(300_000, dtype=np.float64), "odd": np.arange(7, dtype=np.int8),
              "text": "x" * 100, "pair": (1, 2)}
    written = dump_namespace(values, tmp_path / "file.rmns")
    pickled = pickle_namespace(values)
    sent = b"".join(bytes(chunk) for chunk in pickled.chunks())
    assert sent == (tmp_path / "file.rmns").read_bytes()
    assert pickled.size == written.size == len(sent)
    assert written.sha256 == hashlib.sha256(sent).hexdigest()
    assert all(len(chunk) <= 8 << 20 for chunk in pickled.chunks())
    pickled.release()
    with pytest.raises(ValueError, match="released"):
        next(pickled.chunks())
