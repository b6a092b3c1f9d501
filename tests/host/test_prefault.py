"""Pages copied ahead in a ready pair (host/prefault.py): what a forked process wrote is
listed, a sibling copies exactly those pages while it waits, and stops when its task comes."""

from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import sys
from collections.abc import Callable

import pytest

from remote_magic.host import prefault
from remote_magic.host.prefault import PAGE, decode, encode, held_alone, populate

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self/pagemap")

PAGES = 64


def buffer_pages() -> tuple[mmap.mmap, int]:
    """Private memory of PAGES pages of its own, filled, and the number of its first page."""
    buf = mmap.mmap(-1, PAGES * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.write(b"x" * (PAGES * PAGE))  # present before any fork
    return buf, address(buf) // PAGE


def address(buf: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def offset(buf: mmap.mmap, page: int) -> int:
    """The index in `buf` of the first byte of memory page `page`."""
    return page * PAGE - address(buf)


def in_child(work: Callable[[], object]) -> object:
    """Run `work` in a forked child and return what it returned (pickled through a pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, pickle.dumps(work()))
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return pickle.loads(data)


def pages_of(ranges: prefault.Ranges) -> set[int]:
    return {first + i for first, count in ranges for i in range(count)}


def test_a_forked_process_lists_the_pages_it_wrote_and_not_the_others() -> None:
    buf, first = buffer_pages()

    def write_some() -> set[int]:
        for page in range(first + 10, first + 20):
            buf[offset(buf, page) + 8] = 0
        return pages_of(held_alone())

    alone = in_child(write_some)
    assert set(range(first + 10, first + 20)) <= alone
    assert not alone & set(range(first + 30, first + 40))


@pytest.mark.parametrize("kernel", ["madvise", "write"])
def test_a_sibling_copies_the_listed_pages_ahead(kernel: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if kernel == "madvise" and prefault._kernel() < (5, 14):
        pytest.skip("a kernel without MADV_POPULATE_WRITE")
    if kernel == "write":  # as on a kernel older than 5.14
        monkeypatch.setattr(prefault, "_kernel", lambda: (5, 4))
    buf, first = buffer_pages()
    listed = [(first + 10, 10)]

    def copy_ahead() -> tuple[int, set[int], bool]:
        done = populate(listed, lambda: False)
        alone = pages_of(held_alone())
        return done, alone, buf[:] == b"x" * len(buf)  # copied, not changed

    done, alone, same = in_child(copy_ahead)
    assert done == 10 and same
    assert set(range(first + 10, first + 20)) <= alone
    assert not alone & set(range(first + 30, first + 40))


def test_copying_stops_when_the_task_comes() -> None:
    buf, first = buffer_pages()
    calls = []

    def arrives_after_two_looks() -> bool:
        calls.append(1)
        return len(calls) > 2

    def copy_ahead() -> tuple[int, set[int]]:
        return populate([(first, PAGES)], arrives_after_two_looks), pages_of(held_alone())

    done, alone = in_child(copy_ahead)
    assert done == 2 * prefault.CHUNK
    assert not alone & set(range(first + 2 * prefault.CHUNK, first + PAGES))


@pytest.mark.parametrize("kernel", ["madvise", "write"])
def test_pages_that_are_not_writable_memory_of_ours_are_left_alone(
        kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if kernel == "write":
        monkeypatch.setattr(prefault, "_kernel", lambda: (5, 4))
    text = next(first for first, _ in _mappings(b"r-xp"))
    # page 0, the interpreter's code (read-only) and far past any mapping: a write there
    # would kill the child, so it answering at all is the test
    assert in_child(lambda: populate([(0, 4), (text, 2), (1 << 34, 8)], lambda: False)) == 0


def _mappings(perms: bytes) -> list[tuple[int, int]]:
    found = []
    with open("/proc/self/maps", "rb") as maps:
        for line in maps:
            fields = line.split()
            if fields[1] == perms:
                low, high = (int(x, 16) // PAGE for x in fields[0].split(b"-"))
                found.append((low, high - low))
    return found


def test_ranges_travel_as_one_short_line() -> None:
    ranges = [(1000, 3), (1010, 1), (5000, 20)]
    assert decode(encode(ranges).split()) == ranges
    assert decode(encode(list(reversed(ranges))).split()) == ranges  # sorted on the way
    many = [(i * 10, 2) for i in range(2000)]
    line = encode(many, limit=500)
    assert len(line) <= 500
    assert decode(line.split()) == many[:len(line.split())]
    # a damaged word ends the list; nothing raises
    assert decode(["10:2", "zz", "5:1"]) == [(16, 2)]
    assert decode(["-1:2"]) == [] and decode(["3:0"]) == []


def test_the_report_is_one_atomic_pipe_write() -> None:
    line = prefault.report("run")
    assert line.startswith(b"pages run ") and line.endswith(b"\n")
    assert len(line) <= 4096


def test_clip_keeps_only_the_pages_inside_the_allowed_ranges() -> None:
    clip = prefault._clip
    assert clip([(0, 10), (20, 10)], [(5, 20)]) == [(5, 5), (20, 5)]
    assert clip([(0, 10)], [(2, 2), (6, 2)]) == [(2, 2), (6, 2)]
    assert clip([(0, 3)], [(10, 5)]) == []
