"""The inputs' digest: BLAKE3 of exactly the bytes, however they are cut into pieces."""

from __future__ import annotations

import os
import signal
import time

import blake3
import numpy as np

from remote_magic.client.fingerprint import PARALLEL_MIN, PREFIX, fingerprint, named, new_digest
from remote_magic.wire.serialization import pickle_namespace


def test_the_digest_does_not_depend_on_how_the_bytes_are_cut() -> None:
    data = bytes(range(256)) * 4099
    whole = fingerprint([data])
    assert whole == PREFIX + blake3.blake3(data).hexdigest()
    view = memoryview(data)
    for step in (1, 7, 4096, 65537, len(data)):
        assert fingerprint(view[i:i + step] for i in range(0, len(data), step)) == whole
    digest = new_digest()
    digest.update(data)
    assert named(digest) == whole
    assert fingerprint([data[:-1] + b"\x00"]) != whole


def test_pickled_inputs_are_named_by_their_file_bytes() -> None:
    """What names the inputs is the digest of the file the host receives, so a change to any
    value changes it, and the same values give the same name."""
    values = {"a": np.arange(1000, dtype=np.float64), "b": "text"}
    first = pickle_namespace(values)
    name = fingerprint(first.chunks())
    assert name == fingerprint(pickle_namespace(values).chunks()) \
        == fingerprint([b"".join(bytes(c) for c in first.chunks())])
    values["a"][5] = -1.0  # the pickled buffers are views of the array: read them again
    assert fingerprint(first.chunks()) == fingerprint(pickle_namespace(values).chunks()) != name


def test_large_inputs_are_named_alike_on_several_threads_also_in_a_forked_child() -> None:
    """A kernel forked after naming a large input (multiprocessing's default on Linux) names
    the next one in the child: the threads are the digest's own, not a global pool the child
    would wait for forever."""
    data = np.random.default_rng(0).bytes(PARALLEL_MIN + 12345)
    assert new_digest(len(data)).update(data).hexdigest() == blake3.blake3(data).hexdigest()
    threaded = fingerprint([data[:PARALLEL_MIN], data[PARALLEL_MIN:]], len(data))
    assert threaded == fingerprint([data])
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's report is what is checked
        os.close(r)
        os.write(w, fingerprint([data], len(data)).encode())
        os._exit(0)
    os.close(w)
    deadline = time.monotonic() + 30
    while os.waitpid(child, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            raise AssertionError("the forked child never finished naming its input")
        time.sleep(0.01)
    with os.fdopen(r, "rb") as said:
        assert said.read().decode() == threaded
