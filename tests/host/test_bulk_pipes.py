"""Bulk bytes between the kernel and the agent over real pipes, as OpenSSH carries them: an
upload's chunks go from the agent's stdin into their file (spliced), a download goes from the
file to the agent's stdout (sendfile) and from the kernel's pipe into the local file (spliced);
the framing holds whatever the timing, a full disk, or a file cut short."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.disks import small_disk
from helpers.waiting import wait_for

from remote_magic.client.agent_client import AgentClient
from remote_magic.client.transport.openssh import ProcessChannel
from remote_magic.client.transport.ssh import _await_marker, _SSHChannel
from remote_magic.errors import TransportError
from remote_magic.host.exchange import FileRange, send_range
from remote_magic.wire.diskwrite import splice_into
from remote_magic.wire.protocol import MARKER, FrameReader, encode

SMALL_DISK = 1024 * 1024


class RawAgent:
    """The agent over two pipes, written to frame by frame, so a test decides where the
    bytes are cut and when they come."""

    def __init__(self, workdir: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "remote_magic.host.agent", "--workdir", str(workdir),
             "--cold"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.reader = FrameReader()
        self.replies: list[tuple[dict[str, Any], bytes]] = []
        seen = b""
        while MARKER not in seen:
            seen += os.read(self.process.stdout.fileno(), 65536)  # type: ignore[union-attr]
        self.replies += self.reader.feed(seen.split(MARKER, 1)[1])

    def write(self, data: bytes) -> None:
        self.process.stdin.write(data)  # type: ignore[union-attr]

    def reply(self, request_id: int, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message, _ in self.replies:
                if message.get("id") == request_id:
                    return message
            self.replies += self.reader.feed(
                os.read(self.process.stdout.fileno(), 1 << 20))  # type: ignore[union-attr]
        raise AssertionError(f"no reply to request {request_id}")

    def call(self, request_id: int, op: str, **args: Any) -> dict[str, Any]:
        self.write(encode({"id": request_id, "op": op, "args": args}, b""))
        return self.reply(request_id)

    def chunk_in_pieces(self, handle: int, payload: bytes, cuts: list[int]) -> None:
        """One chunk of an upload, its bytes sent in pieces with pauses between them, so that
        the agent has read its header long before the rest comes."""
        frame = encode({"op": "put_chunk", "args": {"handle": handle}}, payload)
        header = len(frame) - len(payload)
        at = 0
        for cut in [header + c for c in cuts] + [len(frame)]:
            self.write(frame[at:cut])
            at = cut
            time.sleep(0.05)

    def close(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        self.process.wait(10)


@pytest.fixture
def raw_agent(tmp_path: Path) -> Iterator[RawAgent]:
    agent = RawAgent(tmp_path / "work")
    yield agent
    agent.close()


def test_an_upload_cut_anywhere_and_sent_slowly_arrives_whole(raw_agent: RawAgent,
                                                              tmp_path: Path) -> None:
    chunks = [os.urandom(4 << 20), os.urandom(1000), os.urandom(3 << 20)]
    size = sum(map(len, chunks))
    handle = raw_agent.call(1, "put_open", path="up/file", size=size)["result"]
    raw_agent.chunk_in_pieces(handle, chunks[0], [0, 1, 70_000, 1 << 20])
    raw_agent.chunk_in_pieces(handle, chunks[1], [999])
    raw_agent.chunk_in_pieces(handle, chunks[2], [5])
    assert raw_agent.call(2, "put_close", handle=handle) == {"ok": True, "result": size, "id": 2}
    assert (tmp_path / "work" / "up" / "file").read_bytes() == b"".join(chunks)


@pytest.mark.parametrize("first", [0, 10], ids=["fails-in-splice", "fails-in-write"])
def test_a_disk_filled_during_an_upload_fails_it_whole_and_the_agent_reads_on(
        first: int, raw_agent: RawAgent, tmp_path: Path) -> None:
    with small_disk(tmp_path / "small", SMALL_DISK) as disk:
        payload = os.urandom(SMALL_DISK // 2)
        handle = raw_agent.call(1, "put_open", path=str(disk / "file"),
                                size=len(payload))["result"]
        filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)  # takes the room first
        try:
            while os.write(filler, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(filler)
        raw_agent.chunk_in_pieces(handle, payload, [first, 200_000])
        failed = raw_agent.call(2, "put_close", handle=handle)
        assert not failed["ok"] and failed["refused"]
        assert failed["error"].startswith("There is no room on {host} for file: it needs 524.3")
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # nothing half-written
        assert raw_agent.call(3, "hello")["ok"]  # the chunk's rest was not read as frames


def test_a_download_is_spliced_from_the_channel_into_the_file_whole(tmp_path: Path) -> None:
    """The kernel's end over an OpenSSH session's pipes (here the agent run directly), asking
    for a file larger than one chunk with a sink that is a file descriptor."""
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    data = os.urandom(9 * (1 << 20) + 123)
    (work / "big").write_bytes(data)
    err = tempfile.TemporaryFile()
    process = subprocess.Popen([sys.executable, "-m", "remote_magic.host.agent", "--workdir",
                                str(work), "--cold"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=err, bufsize=0)
    channel = ProcessChannel(process, err)
    status, _, leftover = _await_marker(channel)
    assert status is None
    client = AgentClient(_SSHChannel(channel, leftover), lambda event: None, "pipes")
    try:
        for name in ("big", "small"):
            if name == "small":
                (work / name).write_bytes(b"tiny")
            with open(tmp_path / f"{name}.copy", "wb", buffering=0) as f:
                result, _ = client.call("get", {"path": name}, timeout=30, sink=f.fileno())
            assert (tmp_path / f"{name}.copy").read_bytes() == (work / name).read_bytes()
            assert result == {"size": (work / name).stat().st_size}
        assert client.request("hello")["workdir"] == str(work)
    finally:
        client.close()


def test_a_file_cut_short_while_it_is_sent_keeps_the_framing_and_fails(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 1000)
    r, w = os.pipe()
    got: list[bytes] = []
    drain = threading.Thread(target=lambda: got.extend(iter(lambda: os.read(r, 65536), b"")))
    drain.start()
    try:
        with open(tmp_path / "f", "rb") as f:
            send_range(w, FileRange(f.fileno(), 500, 400))  # whole: sent as it is
            with pytest.raises(OSError, match="cut short while it was being sent"):
                send_range(w, FileRange(f.fileno(), 900, 300))  # 100 bytes are there
    finally:
        os.close(w)
        drain.join()
        os.close(r)
    assert b"".join(got) == b"x" * 500 + b"\0" * 200


class PipeChannel:
    """The kernel's side of a channel whose far end the test writes by hand."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def recv(self) -> bytes:
        return os.read(self.r, 1 << 20)

    def splice_to(self, fd: int, count: int) -> int:
        return splice_into(self.r, fd, count)

    def close(self) -> None:
        """Closed as an ssh process ends: what was on its way still comes for a moment."""
        threading.Timer(0.5, os.close, (self.w,)).start()

    def describe_failure(self) -> str:
        return "closed"


def test_a_download_given_up_on_never_writes_into_a_file_opened_since(tmp_path: Path) -> None:
    """The caller stops waiting halfway and closes its file, whose number the next file opened
    takes at once. The channel is closed, which ends the answer; what was already on its way
    lands in the reader's own copy of the descriptor, never in the new file."""
    channel = PipeChannel()
    client = AgentClient(channel, lambda event: None, "pipes")
    payload = os.urandom(300_000)
    frame = encode({"stream": 1}, payload)  # the answer to the first request
    head = len(frame) - len(payload) + 1000
    fd = os.open(tmp_path / "given-up", os.O_WRONLY | os.O_CREAT, 0o600)
    threading.Timer(0.1, os.write, (channel.w, frame[:head])).start()
    with pytest.raises(TransportError, match="did not answer 'get' within"):
        client.call("get", {"path": "x"}, timeout=0.5, sink=fd)
    other = os.open(tmp_path / "other", os.O_WRONLY | os.O_CREAT, 0o600)
    os.dup2(other, fd)  # the caller's number now names another file, as a reuse would
    try:
        os.write(channel.w, frame[head:])  # on its way as the channel closes
        assert wait_for(lambda: not client.alive, 5)  # given up: the channel is closed
        assert wait_for(lambda: not _open_files("given-up"), 5)
    finally:
        os.close(other)
        os.close(fd)
        os.close(channel.r)
    assert (tmp_path / "other").read_bytes() == b""
    assert (tmp_path / "given-up").read_bytes() == payload


def _open_files(name: str) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return [path for path in found if path.endswith("/" + name)]
