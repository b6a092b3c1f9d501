"""Copy ahead, in a ready runner, the memory pages its task will write (Linux).

A process forked from the warm process shares its memory until it writes to it; then every
page it writes is copied, one fault at a time. A trivial task's runner takes about 650 such
faults, and on a virtual machine each costs microseconds: a few milliseconds on the task's
path. The pages are nearly the same from task to task (the runner's own code, the
interpreter's objects), and sibling processes forked from one process lay out their memory
alike. So a runner that has just finished lists the pages it holds alone
(`/proc/self/pagemap`: present and mapped by it only) and reports them to its keeper; the
next ready runner, while it waits for a task, copies those pages ahead
(`madvise(MADV_POPULATE_WRITE)`, or on a kernel older than 5.14 a write of each page's first
byte to itself), a few at a time, and stops as soon as its task arrives.

Everything here is best effort: an address that is not writable memory of this process is
skipped, any error means no prefault, and elsewhere than Linux nothing happens.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

Ranges = list[tuple[int, int]]  # (first page number, pages)

MADV_POPULATE_WRITE = 23  # <linux/mman.h>, Linux 5.14
MAX_LINE = 3800  # a report is one atomic pipe write (PIPE_BUF is 4096 on Linux)
CHUNK = 16  # pages copied between two looks at whether the task has come
LARGEST = 1 << 30  # bytes: a larger mapping is a task's data, not worth listing
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_HELD_ALONE = bytes(1 if byte & 0x81 == 0x81 else 0 for byte in range(256))  # present, exclusive


def writable() -> Ranges:
    """This process's private writable mappings, as page ranges."""
    ranges = []
    with open("/proc/self/maps", "rb") as maps:
        for line in maps:
            fields = line.split()
            if fields[1] != b"rw-p":
                continue
            low, high = (int(x, 16) // PAGE for x in fields[0].split(b"-"))
            ranges.append((low, high - low))
    return ranges


def held_alone() -> Ranges:
    """The pages of private writable memory that this process holds alone: those it wrote
    (or allocated) since it was forked."""
    found: Ranges = []
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        for first, count in writable():
            if count * PAGE > LARGEST:
                continue
            entries = os.pread(fd, count * 8, first * 8)
            flags = entries[7::8].translate(_HELD_ALONE)  # each entry's top byte
            found += [(first + m.start(), m.end() - m.start())
                      for m in re.finditer(rb"\x01+", flags)]
    finally:
        os.close(fd)
    return found


def encode(ranges: Ranges, limit: int = MAX_LINE) -> str:
    """`ranges` as hex `gap:count` words (gap from the end of the range before), at most
    `limit` characters: what does not fit is left out."""
    words: list[str] = []
    size = 0
    end = 0
    for first, count in sorted(ranges):
        word = f"{first - end:x}:{count:x}"
        if size + len(word) + 1 > limit:
            break
        words.append(word)
        size += len(word) + 1
        end = first + count
    return " ".join(words)


def decode(words: list[str]) -> Ranges:
    """The ranges `encode` wrote; a damaged word ends the list."""
    ranges: Ranges = []
    end = 0
    for word in words:
        try:
            gap, count = (int(x, 16) for x in word.split(":"))
        except ValueError:
            break
        if gap < 0 or count <= 0:
            break
        ranges.append((end + gap, count))
        end += gap + count
    return ranges


def report(kind: str) -> bytes:
    """The line a finished runner sends its keeper: `pages KIND ...`."""
    if not sys.platform.startswith("linux"):
        return b""
    try:
        ranges = held_alone()
    except OSError:
        return b""
    return f"pages {kind} {encode(ranges, MAX_LINE - 16 - len(kind))}\n".encode()


def _clip(ranges: Ranges, allowed: Ranges) -> Ranges:
    """`ranges` cut down to the pages inside `allowed` (both sorted by first page)."""
    clipped: Ranges = []
    i = 0
    for first, count in allowed:
        end = first + count
        while i < len(ranges) and ranges[i][0] + ranges[i][1] <= first:
            i += 1
        j = i
        while j < len(ranges) and ranges[j][0] < end:
            low, high = max(ranges[j][0], first), min(ranges[j][0] + ranges[j][1], end)
            clipped.append((low, high - low))
            j += 1
    return clipped


def populate(ranges: Ranges, arrived: Callable[[], bool]) -> int:
    """Copy the pages of `ranges` that are this process's writable memory, CHUNK pages at a
    time, until `arrived()` says the task has come; the number of pages copied."""
    if not ranges or not sys.platform.startswith("linux"):
        return 0
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        todo = _clip(sorted(ranges), writable())
    except (OSError, AttributeError, ValueError):
        return 0
    advise = _kernel() >= (5, 14)
    done = 0
    for first, count in todo:
        for low in range(first, first + count, CHUNK):
            if arrived():
                return done
            pages = min(CHUNK, first + count - low)
            if advise:
                if libc.madvise(low * PAGE, pages * PAGE, MADV_POPULATE_WRITE) != 0:
                    continue  # memory the kernel will not fill ahead: left as it is
            else:  # one thread here, in memory we checked is ours and writable
                for page in range(low, low + pages):
                    byte = ctypes.c_char.from_address(page * PAGE)
                    byte.value = byte.value
            done += pages
    return done


def _kernel() -> tuple[int, ...]:
    numbers = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return tuple(int(x) for x in numbers.groups()) if numbers else (0, 0)
