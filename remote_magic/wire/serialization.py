"""Namespace containers: the file that carries named Python values between notebook and task.

Values are pickled with cloudpickle at protocol 5 with out-of-band buffers, so the bytes of a
large numpy array (or anything else exposing a `pickle.PickleBuffer`) go from the array's own
memory straight to the file, and on loading they are memory-mapped back in place instead of
being read into a fresh allocation. A 400 MB array therefore costs no second 400 MB on either
side.

File layout (all integers little-endian, format version 1)::

    offset 0      8 bytes   magic tag  b"\\x93RMNS\\r\\n\\x1a"
    offset 8      u32       format version
    offset 12     u32       H = length of the header region
    offset 16     H bytes   JSON header (UTF-8), padded with spaces so that 16 + H is a
                            multiple of 64; the data region starts at D = 16 + H
    offset D      frames    the in-band pickle bytes of each stored value, back to back
                  buffers   the raw bytes of each out-of-band buffer, in the order the pickler
                            produced them, each starting at a multiple of 64 (zero padding)

The header is::

    {"size": <length of the data region>,
     "values": [{"name": str, "offset": int, "length": int,
                 "buffers": <out-of-band buffers this value consumes>,
                 "new_memo": <the pickle memo was reset before this value>}, ...],
     "buffers": [[offset, length], ...],
     "skipped": {name: "TypeName: reason", ...}}

Offsets in the header are relative to D. Because D is itself a multiple of 64, a buffer that is
aligned within the data region is also aligned in the file and in a memory map of it (maps are
page-aligned), which is what lets numpy use the mapped bytes directly.

One pickler pickles every value and one unpickler loads them, in order, so that an object
reachable from two names (`a = b = big_list`) is stored once and comes back as one object.
The exception is a value skipped with ``on_error="skip"``: its partial pickle may have left
memo entries behind, so the pickler's memo is cleared and the loader starts a fresh memo at
the same point (``new_memo``). Sharing between values stored before and after a skipped one
is then lost; each side still loads correctly.

The file is written to a temporary name next to its destination and renamed into place, so a
reader sees either the previous file or the complete new one. There is no fsync: the file must
survive a concurrent reader, not a power cut. Like any `tempfile.mkstemp` file it is readable by
its owner only, which suits values that may include credentials from the notebook.

This module is imported by the runner process on the remote side, whose start-up time is paid
by every task: it imports only the standard library at import time (cloudpickle only when
dumping; unpickling imports whatever the stored values need).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import pickle
import struct
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import SerializationError
from .diskwrite import write_all
from .pickling import Unpickler, make_pickler, receiving_into
from .tempnames import temp_prefix

__all__ = ["DumpResult", "Pickled", "dump_namespace", "load_namespace", "pickle_namespace",
           "read_names", "written_size"]

MAGIC = b"\x93RMNS\r\n\x1a"
# Entry names that are not identifiers say what an entry is for. IN_PLACE + name: the new
# content of the object the notebook sent as `name`, to be applied to that object in place.
IN_PLACE = "<in-place>:"
EXCEPTION = "<exception>"  # what the cell raised: (type, args, attributes)
AMBIENT = "<ambient>"  # module settings (random state, styles, options): see `ambient`
FORMAT_VERSION = 1
ALIGNMENT = 64

_PREAMBLE = struct.Struct("<8sII")
# Hash and write big buffers piecewise so each piece is still in cache when it is written.
_WRITE_SLICE = 8 << 20


@dataclass(frozen=True)
class DumpResult:
    """What the caller needs to ship the file and to tell the user what was left out."""

    sha256: str
    size: int
    skipped: dict[str, str] = field(default_factory=dict)
    aliased: tuple[str, ...] = ()  # names from `aliases` that were stored


def _align(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


class _FrameWriter:
    """The pickler's in-band output, kept in memory so that a failed value can be cut off.

    Large `bytes` payloads are kept by reference rather than copied into one growing buffer,
    so a big bytes value does not exist twice while the file is written.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def write(self, data: Any) -> int:
        # The C pickler hands over its own finished `bytes`, or a view of memory that may be
        # freed or reused once this call returns: only `bytes` is safe to keep as is.
        chunk = data if type(data) is bytes else bytes(data)
        self.chunks.append(chunk)
        self.size += len(chunk)
        return len(chunk)

    def mark(self) -> tuple[int, int]:
        return len(self.chunks), self.size

    def truncate(self, mark: tuple[int, int]) -> None:
        del self.chunks[mark[0]:]
        self.size = mark[1]


def _skip_reason(value: object, exc: BaseException) -> str:
    message = str(exc) or type(exc).__name__
    return f"{type(value).__qualname__}: {message}"


def dump_namespace(
    values: Mapping[str, Any], path: str | os.PathLike[str], *, on_error: str = "raise",
    namespace: dict[str, Any] | None = None, send_globals: bool = True,
    refs: Mapping[int, str] | None = None, aliases: Mapping[str, Any] | None = None,
    digest: bool = True,
) -> DumpResult:
    """Write `values` to `path` atomically (see `pickle_namespace` for the arguments); without
    `digest`, the result's sha256 is "" (a large file is not hashed for nobody)."""
    pickled = pickle_namespace(values, on_error=on_error, namespace=namespace,
                               send_globals=send_globals, refs=refs, aliases=aliases)
    try:
        return pickled.write(path, digest=digest)
    finally:
        pickled.release()


def pickle_namespace(
    values: Mapping[str, Any], *, on_error: str = "raise",
    namespace: dict[str, Any] | None = None, send_globals: bool = True,
    refs: Mapping[int, str] | None = None, aliases: Mapping[str, Any] | None = None,
) -> Pickled:
    """Pickle `values` in memory, for `Pickled.write` to put in a file or `Pickled.chunks` to
    send as the file's bytes: out-of-band buffers stay views of the values' own memory, so
    a large array is not copied on the way (the caller keeps the values alive, and releases
    the result).

    `namespace`, `send_globals` and `refs` are the pickler's (see `pickling.make_pickler`).
    `aliases` are further names offered for free: each whose object was pickled anyway, as
    part of some value, is stored too (a memo reference of a few bytes). The receiver then
    holds every name by which the sender could reach those objects.

    With ``on_error="raise"`` the first value that cannot be pickled aborts with a
    `SerializationError` naming it. With ``on_error="skip"`` such values are left out and
    listed in the result, so that a task can still run with the rest (the caller decides
    whether that is acceptable).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    writer = _FrameWriter()
    buffers: list[memoryview] = []

    def take_buffer(buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:
            # Not contiguous, so it cannot be written as one run of bytes: returning True
            # asks pickle to put it in-band, or to explain why it cannot.
            return True
        buffers.append(view)
        return False

    pickler = make_pickler(writer, take_buffer, namespace=namespace, send_globals=send_globals,
                           refs=refs)
    entries: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    memo_cleared = False
    done = False
    try:
        for name, value in values.items():
            if not isinstance(name, str):
                raise TypeError(f"variable names must be str, not {type(name).__name__}")
            mark = writer.mark()
            first_buffer = len(buffers)
            # an input changed in place goes back as its content; under any other name, an
            # object the notebook sent goes back as a reference to the notebook's own
            pickler.top = value if name.startswith(IN_PLACE) else None
            try:
                pickler.dump(value)
            except Exception as exc:
                if on_error == "raise":
                    raise SerializationError(name, value, exc) from exc
                writer.truncate(mark)
                for view in buffers[first_buffer:]:
                    view.release()
                del buffers[first_buffer:]
                # The memo may now refer to objects whose pickle was just discarded.
                pickler.clear_memo()
                memo_cleared = True
                skipped[name] = _skip_reason(value, exc)
                continue
            entries.append({
                "name": name,
                "offset": mark[1],
                "length": writer.size - mark[1],
                "buffers": len(buffers) - first_buffer,
                "new_memo": memo_cleared,
            })
            memo_cleared = False
        aliased = _dump_aliases(pickler, writer, entries, values, aliases or {}, memo_cleared)
        del pickler  # its memo keeps every pickled object alive
        pickled = Pickled(entries, writer, buffers, skipped, aliased)
        done = True
        return pickled
    finally:
        if not done:
            for view in buffers:
                view.release()


def _dump_aliases(pickler: Any, writer: _FrameWriter, entries: list[dict[str, Any]],
                  values: Mapping[str, Any], aliases: Mapping[str, Any],
                  new_memo: bool) -> tuple[str, ...]:
    candidates = {n: v for n, v in aliases.items() if n not in values}
    if not candidates:
        return ()
    memo = pickler.memo.copy()
    stored = []
    for name, value in candidates.items():
        if id(value) not in memo:
            continue
        mark = writer.mark()
        pickler.top = value
        pickler.dump(value)  # a memo hit: a few bytes
        entries.append({"name": name, "offset": mark[1], "length": writer.size - mark[1],
                        "buffers": 0, "new_memo": new_memo})
        new_memo = False
        stored.append(name)
    return tuple(stored)


class Pickled:
    """A namespace pickled in memory: the file's layout and the means to produce its bytes.

    `chunks()` yields exactly the bytes `write` puts in a file, which lets a transport send a
    task's inputs without a local copy of them.
    """

    def __init__(self, entries: list[dict[str, Any]], writer: _FrameWriter,
                 buffers: list[memoryview], skipped: dict[str, str],
                 aliased: tuple[str, ...]) -> None:
        self.skipped, self.aliased = dict(skipped), aliased
        self._writer, self._buffers = writer, buffers
        self._table: list[list[int]] = []
        end = writer.size
        for view in buffers:
            start = _align(end)
            self._table.append([start, view.nbytes])
            end = start + view.nbytes
        header = json.dumps(
            {"size": end, "values": entries, "buffers": self._table, "skipped": skipped},
            separators=(",", ":"),
        ).encode("utf-8")
        self._data_start = _align(_PREAMBLE.size + len(header))
        self._head = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, self._data_start - _PREAMBLE.size) \
            + header + b" " * (self._data_start - _PREAMBLE.size - len(header))
        self.size = self._data_start + end
        self.digest = ""  # the bytes' digest, for whoever computed one (the client's id)
        self.released = False

    def chunks(self) -> Iterator[bytes | memoryview]:
        """The file's bytes, in order, in pieces of at most 8 MiB (views, not copies)."""
        if self.released:
            raise ValueError("the pickled values were released: their bytes are gone")
        yield self._head
        position = len(self._head)
        for chunk in self._writer.chunks:
            yield chunk
            position += len(chunk)
        for (offset, _), view in zip(self._table, self._buffers):
            gap = self._data_start + offset - position
            if gap:
                yield bytes(gap)
            flat = view.cast("B") if view.ndim != 1 or view.format != "B" else view
            for start in range(0, flat.nbytes, _WRITE_SLICE):
                yield flat[start:start + _WRITE_SLICE]
            position = self._data_start + offset + view.nbytes

    def write(self, path: str | os.PathLike[str], digest: bool = True) -> DumpResult:
        """Write the file atomically (temporary name, then rename), hashing as it goes unless
        told not to (the result's sha256 is then "")."""
        directory, base = os.path.split(os.path.abspath(os.fspath(path)))
        fd, temp = tempfile.mkstemp(prefix=temp_prefix(Path(base)), suffix=".tmp",
                                    dir=directory)
        hashed = hashlib.sha256() if digest else None
        try:
            with open(fd, "wb", buffering=0):  # closes fd
                for chunk in self.chunks():
                    if hashed is not None:
                        hashed.update(chunk)
                    write_all(fd, chunk)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return DumpResult(sha256=hashed.hexdigest() if hashed is not None else "", size=self.size,
                          skipped=dict(self.skipped), aliased=self.aliased)

    def release(self) -> None:
        """Let go of the values' memory (the views of their buffers)."""
        for view in self._buffers:
            view.release()
        self._buffers = []
        self.released = True


def _not_ours(path: str, why: str) -> ValueError:
    return ValueError(f"{path} is not a remote_magic namespace file ({why})")


def _truncated(path: str, expected: int, actual: int) -> ValueError:
    return ValueError(
        f"{path} is a truncated remote_magic namespace file "
        f"(expected {expected} bytes, found {actual})"
    )


def _open(path: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise _not_ours(path, exc.strerror or "cannot be opened") from exc


def _read_header(file: BinaryIO, path: str) -> tuple[dict[str, Any], int]:
    """Reject foreign, truncated and inconsistent files before unpickling anything, so the
    error names the file instead of surfacing as some obscure pickle failure."""
    actual = os.fstat(file.fileno()).st_size
    preamble = file.read(_PREAMBLE.size)
    if len(preamble) < _PREAMBLE.size:
        if MAGIC.startswith(preamble[:len(MAGIC)]) and preamble:
            raise _truncated(path, _PREAMBLE.size, actual)
        raise _not_ours(path, "empty file" if not preamble else "wrong magic tag")
    magic, version, header_length = _PREAMBLE.unpack(preamble)
    if magic != MAGIC:
        raise _not_ours(path, "wrong magic tag")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path} is a remote_magic namespace file of format version {version}, but this "
            f"remote_magic reads version {FORMAT_VERSION}; use the same remote_magic version "
            "on both sides"
        )
    data_start = _PREAMBLE.size + header_length
    raw = file.read(header_length)
    if len(raw) < header_length:
        raise _truncated(path, data_start, actual)
    try:
        header = json.loads(raw.decode("utf-8"))
        size = header["size"]
        spans = [(v["offset"], v["length"]) for v in header["values"]]
        spans += [tuple(b) for b in header["buffers"]]
        ok = (isinstance(size, int)
              and all(isinstance(v["name"], str) and isinstance(v["buffers"], int)
                      and isinstance(v["new_memo"], bool) for v in header["values"])
              and all(isinstance(o, int) and isinstance(n, int) and 0 <= o and 0 <= n
                      and o + n <= size for o, n in spans))
    except (ValueError, KeyError, TypeError) as exc:
        raise _not_ours(path, f"unreadable header: {exc}") from exc
    if not ok:
        raise _not_ours(path, "inconsistent header")
    if actual < data_start + size:
        raise _truncated(path, data_start + size, actual)
    if actual > data_start + size:
        raise _not_ours(path, f"{actual - data_start - size} unexpected bytes at the end")
    return header, data_start


def written_size(fd: int) -> int | None:
    """The size a namespace file being written will have once whole, read from its preamble
    and header (written first), or None while they are not all there yet: a reader can then
    follow the file as it grows. A file that is not ours raises ValueError."""
    preamble = os.pread(fd, _PREAMBLE.size, 0)
    if len(preamble) < _PREAMBLE.size:
        return None
    magic, version, header_length = _PREAMBLE.unpack(preamble)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise ValueError("not a remote_magic namespace file of this version")
    raw = os.pread(fd, header_length, _PREAMBLE.size)
    if len(raw) < header_length:
        return None
    try:
        size = json.loads(raw.decode("utf-8"))["size"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"unreadable header: {exc}") from exc
    if not isinstance(size, int) or size < 0:
        raise ValueError("inconsistent header")
    return _PREAMBLE.size + header_length + size


def read_names(path: str | os.PathLike[str]) -> list[str]:
    """Names stored in the file, from its header alone: lets a caller see what a task will
    receive or returned without unpickling anything (or importing what the values need)."""
    path = os.fspath(path)
    with _open(path) as file:
        header, _ = _read_header(file, path)
    return [entry["name"] for entry in header["values"]]


class _MapReader:
    """File-like reader over a memoryview, for the unpickler.

    It offers `readinto`, so the unpickler fills a large in-band value directly from the map
    instead of through an intermediate `bytes`; and it never reads ahead, so the position after
    each `load()` is exactly the end of that value's frame, which is checked.
    """

    def __init__(self, view: memoryview, end: int) -> None:
        self.view = view
        self.end = end
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        stop = self.end if size < 0 else min(self.end, self.position + size)
        data = self.view[self.position:stop].tobytes()
        self.position = max(self.position, stop)
        return data

    def readinto(self, target: Any) -> int:
        out = memoryview(target).cast("B")
        count = max(0, min(out.nbytes, self.end - self.position))
        out[:count] = self.view[self.position:self.position + count]
        self.position += count
        return count

    def readline(self) -> bytes:
        # Protocol 5 pickles hardly use text opcodes; a slow scan is good enough.
        stop = self.position
        while stop < self.end and self.view[stop] != 0x0A:
            stop += 1
        return self.read(stop + 1 - self.position)


class _BufferFeed:
    """The out-of-band buffers in file order, counting how many each value takes."""

    def __init__(self, views: list[memoryview]) -> None:
        self.views = views
        self.used = 0

    def __iter__(self) -> Iterator[memoryview]:
        return self

    def __next__(self) -> memoryview:
        if self.used >= len(self.views):
            raise StopIteration
        self.used += 1
        return self.views[self.used - 1]


def load_namespace(path: str | os.PathLike[str], *, namespace: dict[str, Any] | None = None,
                   refs: Mapping[str, Any] | None = None,
                   failed: dict[str, str] | None = None) -> dict[str, Any]:
    """Read back what `dump_namespace` wrote.

    Functions that were bound to the sender's namespace get `namespace` as their globals (a
    fresh dict if None); references by name resolve in `refs`. With `failed`, a value that
    cannot be loaded here (its class exists only where it was made, say) is left out and
    recorded there, name -> why, and the other values still load; without it, it raises.

    The file is mapped privately (copy-on-write): arrays come back writable, their pages are
    read only when touched, and writing to them never changes the file. The map stays open as
    long as any loaded value uses it.
    """
    path = os.fspath(path)
    with _open(path) as file:
        header, data_start = _read_header(file, path)
        try:
            region: mmap.mmap | bytearray = mmap.mmap(
                file.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError):  # a file system that cannot map: one private copy
            file.seek(0)
            region = bytearray(file.read())
    view = memoryview(region)
    try:
        with receiving_into(namespace):
            return _load_values(path, header, data_start, view, refs, failed)
    finally:
        view.release()
        if isinstance(region, mmap.mmap):
            # Only succeeds when no loaded value kept a buffer; otherwise the map lives on
            # until the last array using it is gone.
            with contextlib.suppress(BufferError):
                region.close()


def _load_values(
    path: str, header: dict[str, Any], data_start: int, view: memoryview,
    refs: Mapping[str, Any] | None, failed: dict[str, str] | None = None,
) -> dict[str, Any]:
    feed = _BufferFeed([view[data_start + offset:data_start + offset + length]
                        for offset, length in header["buffers"]])
    frames_end = data_start + min([b[0] for b in header["buffers"]] + [header["size"]])
    reader = _MapReader(view, frames_end)
    result: dict[str, Any] = {}
    unpickler: pickle.Unpickler | None = None
    consumed = 0  # out-of-band buffers of the values before this one
    for entry in header["values"]:
        name = entry["name"]
        if unpickler is None or entry["new_memo"]:
            unpickler = Unpickler(reader, buffers=feed, refs=refs)
        reader.position = data_start + entry["offset"]
        feed.used = consumed
        consumed += entry["buffers"]
        try:
            result[name] = unpickler.load()
        except Exception as exc:
            if failed is None:
                if hasattr(exc, "add_note"):  # Python 3.11+
                    exc.add_note(f"(while loading variable '{name}' from {path})")
                raise
            failed[name] = f"{type(exc).__name__}: {exc}"
            # A fresh unpickler, with what the earlier values left in the memo: the values
            # after this one may refer to those, not to what this one left half-done.
            memo = unpickler.memo
            unpickler = Unpickler(reader, buffers=feed, refs=refs)
            unpickler.memo = memo
            continue
        if (reader.position != data_start + entry["offset"] + entry["length"]
                or feed.used != consumed):
            raise _not_ours(path, f"the data of variable '{name}' is corrupt")
    return result
