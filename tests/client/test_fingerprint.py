"""The inputs' digest: BLAKE3 of exactly the bytes, however they are cut into pieces."""

from __future__ import annotations

import blake3
import numpy as np

from remote_magic.client.fingerprint import PREFIX, fingerprint, named, new_digest
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
