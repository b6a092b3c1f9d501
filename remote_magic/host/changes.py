"""Which of its inputs a task changed in place: runs in the runner, around the cell.

Locally, `L.sort()` or `model.fit(X, y)` changes the notebook's own object; on a host it
changes a copy, which must go back. So before the cell runs, each input gets a fingerprint,
and afterwards the inputs whose fingerprint moved are sent back.

A fingerprint hashes the value's pickle, except for its large binary buffers (array data),
which would cost a full read of every input. Buffers loaded from the inputs file are memory
maps of it, private and copy-on-write: a buffer is unchanged exactly when none of its pages was
written, which the kernel's page table tells (/proc/self/pagemap: a written page of a private
file map is no longer a file page). Such a buffer enters the hash by its place in the file, so
a 1 GiB input that the cell only reads costs a few page-table reads, not a 1 GiB hash. Where
there is no pagemap (not Linux), or a buffer lives elsewhere, its bytes are hashed.

Standard library only; cloudpickle is already imported by then (the runner pickles with it).
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
import time
import types
from collections.abc import Iterable, Mapping
from typing import Any

from ..wire.pickling import make_pickler

_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), range, types.ModuleType,
              types.BuiltinFunctionType)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PRESENT, _SWAPPED, _FILE_PAGE = 1 << 63, 1 << 62, 1 << 61


def immutable(value: Any) -> bool:
    """Values no cell can change in place (containers of them included)."""
    if isinstance(value, (tuple, frozenset)) and type(value) in (tuple, frozenset):
        return all(isinstance(v, _IMMUTABLE) for v in value)
    return isinstance(value, _IMMUTABLE)


class _Region:
    """One memory map of the inputs file: where it lies in memory and in the file."""

    def __init__(self, start: int, end: int, offset: int) -> None:
        self.start, self.end, self.offset = start, end, offset


def mapped_regions(path: str) -> list[_Region]:
    """The private maps of `path` in this process, from /proc/self/maps (none elsewhere)."""
    target = os.path.realpath(path)
    regions = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == target and \
                        fields[1].endswith("p"):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    regions.append(_Region(start, end, int(fields[2], 16)))
    except OSError:
        pass
    return regions


def _address(view: memoryview) -> int | None:
    if not view.nbytes:
        return None
    if not view.readonly:
        import ctypes

        holder = ctypes.c_char.from_buffer(view)
        try:
            return ctypes.addressof(holder)
        finally:
            del holder
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        return int(numpy.frombuffer(view, numpy.uint8).ctypes.data)
    return None


def _any_written(entries: bytes) -> bool:
    """Whether a run of pagemap entries has a page that is no longer the file's own: swapped
    out, or present without being a file page (a private copy made by a write)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        flags = numpy.frombuffer(entries, dtype="<u8")
        written = (flags & _SWAPPED) | ((flags & _PRESENT) & ~((flags & _FILE_PAGE) << 2))
        return bool(written.any())
    return any(entry & _SWAPPED or (entry & _PRESENT and not entry & _FILE_PAGE)
               for (entry,) in struct.iter_unpack("<Q", entries))


class _Hasher:
    """The file-like end of a pickler: hashes what it is given."""

    def __init__(self) -> None:
        self.digest = hashlib.blake2b(digest_size=20)

    def write(self, data: Any) -> int:
        self.digest.update(data)
        return len(data)


class InputWatch:
    """Fingerprints of a task's inputs before it runs, to compare with afterwards."""

    def __init__(self, inputs: Mapping[str, Any], inputs_file: str | None,
                 namespace: dict[str, Any]) -> None:
        started = time.perf_counter()
        self.namespace = namespace
        self.regions = mapped_regions(inputs_file) if inputs_file else []
        self.spans: list[tuple[int, int]] = []
        watched = {n: v for n, v in inputs.items() if not immutable(v)}
        # Pickling an instance caches `__slotnames__` on its class: once first, so that the
        # fingerprints below do not see a class "change" because another input was pickled.
        for value in watched.values():
            self._fingerprint(value)
        self.spans = []
        self.before = {name: self._fingerprint(value) for name, value in watched.items()}
        self.seconds = time.perf_counter() - started  # what the check cost the task

    def changed(self, inputs: Mapping[str, Any]) -> list[str]:
        """Names whose object (the one that was sent, whatever the name holds now) changed."""
        started = time.perf_counter()
        changed = []
        for name, before in self.before.items():
            self.spans = []
            after = self._fingerprint(inputs[name])
            if after != before or after is None or self._written(self.spans):
                changed.append(name)
        self.seconds += time.perf_counter() - started
        return changed

    def _fingerprint(self, value: Any) -> bytes | None:
        hasher = _Hasher()

        def on_buffer(buffer: Any) -> bool:
            try:
                view = buffer.raw()
            except BufferError:
                return True  # not contiguous: pickled in-band, and hashed with the rest
            where = self._locate(view)
            if where is None:
                hasher.digest.update(b"bytes:%d:" % view.nbytes)
                hasher.digest.update(view)
            else:
                hasher.digest.update(b"mapped:%d:%d:" % (where[1], view.nbytes))
                self.spans.append((where[0], view.nbytes))
            return False

        try:
            make_pickler(hasher, on_buffer, namespace=self.namespace,
                         send_globals=False).dump(value)
        except Exception:  # noqa: BLE001 - it pickled in the kernel; if not here, say changed
            return None
        return hasher.digest.digest()

    def _locate(self, view: memoryview) -> tuple[int, int] | None:
        """(address, offset in the file) of a buffer inside a map of the inputs file."""
        if not self.regions:
            return None
        address = _address(view)
        if address is None:
            return None
        for region in self.regions:
            if region.start <= address and address + view.nbytes <= region.end:
                return address, region.offset + address - region.start
        return None

    def _written(self, spans: Iterable[tuple[int, int]]) -> bool:
        """Whether any page of these mapped buffers was written since it was mapped."""
        spans = list(spans)
        if not spans:
            return False
        try:
            pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
        except OSError:
            return True  # cannot tell: say changed, and send it back
        try:
            for address, size in spans:
                first, last = address // _PAGE, (address + size - 1) // _PAGE
                for start in range(first, last + 1, 1 << 16):
                    count = min(1 << 16, last + 1 - start)
                    if _any_written(os.pread(pagemap, 8 * count, 8 * start)):
                        return True
        finally:
            os.close(pagemap)
        return False
