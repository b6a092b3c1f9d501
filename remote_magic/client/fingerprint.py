"""The digest that names a task's inputs, and proves that what was sent is what was named.

A task's id is made from its inputs' digest, and an upload checks that the bytes it sent have
that digest (an argument changed after `submit()` returned would otherwise run under an id
that does not describe it). Both pass over every byte of the inputs, so for a 1 GiB array
the hash was a fifth of the whole round trip over SSH: sha256 runs at ~1.1 GB/s on one core
here, BLAKE3 at ~5 GB/s, with the same strength against collisions. Only the client computes
it: the host never needs the package.

Naming large inputs, before `submit()` returns, uses every core the kernel may run on (2 here:
1 GiB in 0.12 s instead of 0.2 s). Each such digest has a pool of threads of its own, made and
ended with it, never the library's global pool: a global pool's threads would be missing in a
child forked from the kernel, which would wait for them forever. Hashing what is sent, during
an upload, stays on one thread: the sender and the SSH processes already keep the cores busy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import blake3

PREFIX = "blake3:"  # names its algorithm, so that no one takes it for a file's sha256
PARALLEL_MIN = 64 << 20  # bytes: below, starting the threads costs more than they save
MAX_THREADS = 8


def new_digest(size: int = 0) -> blake3.blake3:
    """An empty digest, for `size` bytes: on as many threads as help."""
    threads = min(_cores(), MAX_THREADS) if size >= PARALLEL_MIN else 1
    return blake3.blake3(max_threads=threads)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def named(digest: blake3.blake3) -> str:
    return PREFIX + digest.hexdigest()


def fingerprint(pieces: Iterable[bytes | memoryview], size: int = 0) -> str:
    """The name of `pieces` (`size` bytes in all, if known: large ones are hashed by several
    threads)."""
    digest = new_digest(size)
    for piece in pieces:
        digest.update(piece)
    return named(digest)
