"""Writing large data to files: in 64 KiB writes (see diskwrite's docstring for why), and from
a pipe into a file without passing through Python."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from remote_magic.wire import diskwrite
from remote_magic.wire.diskwrite import PIECE, splice_into, write_all


def test_large_data_goes_to_a_file_in_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    sizes: list[int] = []
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        sizes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(diskwrite.os, "write", write)
    data = np.arange(1_000_000, dtype=np.float64)  # not bytes: written as its raw bytes
    with open(tmp_path / "f", "wb", buffering=0) as f:
        assert write_all(f.fileno(), memoryview(data)) == data.nbytes
    assert (tmp_path / "f").read_bytes() == data.tobytes()
    assert max(sizes) == PIECE and sum(sizes) == data.nbytes


def test_a_pipe_is_spliced_into_a_file_until_the_count(tmp_path: Path) -> None:
    data = os.urandom(3 * PIECE + 5)
    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (write_all(w, data), os.close(w)))
    writer.start()
    try:
        with open(tmp_path / "f", "wb", buffering=0) as f:
            f.write(b"head")
            assert splice_into(r, f.fileno(), len(data) - 100) == len(data) - 100
            assert splice_into(r, f.fileno(), 1000) == 100  # the pipe ended
            assert splice_into(r, f.fileno(), 1000) == 0
    finally:
        writer.join()
        os.close(r)
    assert (tmp_path / "f").read_bytes() == b"head" + data


def test_an_empty_non_blocking_pipe_says_so_and_a_partial_one_gives_what_it_has(
        tmp_path: Path) -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        with open(tmp_path / "f", "wb", buffering=0) as f:
            with pytest.raises(BlockingIOError):
                splice_into(r, f.fileno(), 10)
            os.write(w, b"abc")
            assert splice_into(r, f.fileno(), 10) == 3
    finally:
        os.close(r)
        os.close(w)
    assert (tmp_path / "f").read_bytes() == b"abc"


def test_splicing_from_what_is_not_a_pipe_is_unsupported_and_moves_nothing(tmp_path: Path
                                                                           ) -> None:
    (tmp_path / "src").write_bytes(b"data")
    with open(tmp_path / "src", "rb") as src, open(tmp_path / "dst", "wb") as dst:
        with pytest.raises(io.UnsupportedOperation):
            splice_into(src.fileno(), dst.fileno(), 4)
        assert src.tell() == 0
