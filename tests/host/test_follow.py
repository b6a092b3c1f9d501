"""Following a task's outputs file while its runner writes it (host/follow.py): the bytes go out
as they are written, and the answer says whether they are the task's whole outputs file. A
writer that is killed, a task that ends without such a file, and a kernel that hangs up each
end the follow with no copy to keep."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.waiting import wait_for

from remote_magic.client.agent_client import AgentClient
from remote_magic.client.transport.openssh import ProcessChannel
from remote_magic.client.transport.ssh import _await_marker, _SSHChannel
from remote_magic.host.exchange import Exchange, FileRange, read_range
from remote_magic.host.follow import follow_outputs
from remote_magic.wire.serialization import pickle_namespace
from remote_magic.wire.states import State
from remote_magic.wire.taskdir import TaskPaths, make_task_dir, set_state
from remote_magic.wire.tempnames import temp_prefix

MIN = 1024


def _outputs_bytes(n: int = 300_000) -> bytes:
    pickled = pickle_namespace({"a": np.arange(n, dtype=np.float64)})
    try:
        return b"".join(bytes(chunk) for chunk in pickled.chunks())
    finally:
        pickled.release()


class Collect:
    """An exchange whose streamed chunks are kept; `spoke` says when the kernel speaks."""

    def __init__(self, spoke: threading.Event | None = None) -> None:
        self.data = bytearray()
        self.first: float | None = None  # when the first chunk went out
        self.spoke = spoke or threading.Event()
        self.exchange = Exchange(stream=self.take, wait=self.wait)

    def take(self, chunk: bytes | FileRange) -> None:
        if self.first is None:
            self.first = time.monotonic()
        self.data += read_range(chunk) if isinstance(chunk, FileRange) else chunk

    def wait(self, seconds: float) -> bool:
        return self.spoke.wait(seconds)


@pytest.fixture
def task(tmp_path: Path) -> TaskPaths:
    paths = make_task_dir(tmp_path / "tasks" / "t1")
    set_state(paths, State.RUNNING, pid=os.getpid())
    return paths


def _temp(paths: TaskPaths) -> Path:
    return paths.root / f"{temp_prefix(paths.outputs)}abc123.tmp"


def _write_slowly(paths: TaskPaths, data: bytes, pieces: int = 8, *, rename: bool = True,
                  end: str | None = State.COMPLETED, stop_at: int | None = None) -> None:
    """Write as the runner does (a temporary name, front to back, then the rename and the
    final state), with pauses; `stop_at`: the writer dies after so many bytes."""
    temp = _temp(paths)
    step = -(-len(data) // pieces)
    with open(temp, "wb", buffering=0) as f:
        for at in range(0, len(data), step):
            if stop_at is not None and at >= stop_at:
                break
            f.write(data[at:at + step])
            time.sleep(0.03)
    if rename and stop_at is None:
        os.replace(temp, paths.outputs)
    if end is not None:
        set_state(paths, end)


def _follow(paths: TaskPaths, collect: Collect, writer: threading.Thread | None = None,
            min_size: int = MIN) -> dict[str, Any]:
    if writer is not None:
        writer.start()
    try:
        return follow_outputs(paths, collect.exchange, min_size)
    finally:
        if writer is not None:
            writer.join()


def test_a_file_is_sent_as_it_is_written_and_named_the_outputs(task: TaskPaths) -> None:
    data = _outputs_bytes()
    collect = Collect()
    answer = _follow(task, collect, threading.Thread(target=_write_slowly, args=(task, data)))
    assert answer == {"size": len(data), "final": True}
    assert bytes(collect.data) == data == task.outputs.read_bytes()
    written = task.outputs.stat().st_mtime  # the last write, in the wall clock
    assert collect.first is not None and \
        collect.first < time.monotonic() - (time.time() - written) - 0.1  # long before it


def test_a_file_already_whole_is_sent_whole(task: TaskPaths) -> None:
    data = _outputs_bytes()
    _write_slowly(task, data, pieces=1)
    collect = Collect()
    assert _follow(task, collect) == {"size": len(data), "final": True}
    assert bytes(collect.data) == data


def test_a_follow_asked_before_the_task_starts_waits_for_it(task: TaskPaths) -> None:
    data = _outputs_bytes()

    def later() -> None:
        time.sleep(0.3)
        _write_slowly(task, data)

    collect = Collect()
    assert _follow(task, collect, threading.Thread(target=later))["final"] is True
    assert bytes(collect.data) == data


def test_small_outputs_are_left_to_the_end_of_the_task(task: TaskPaths) -> None:
    data = _outputs_bytes(10)
    _write_slowly(task, data, pieces=1)
    collect = Collect()
    answer = _follow(task, collect, min_size=len(data) + 1)
    assert answer == {"size": 0, "final": False, "why": "small"} and not collect.data


def test_a_task_that_ends_without_outputs_ends_the_follow(task: TaskPaths) -> None:
    def fail() -> None:
        time.sleep(0.2)
        set_state(task, State.FAILED, "boom")

    collect = Collect()
    answer = _follow(task, collect, threading.Thread(target=fail))
    assert answer == {"size": 0, "final": False, "why": "no outputs file"}


def test_a_writer_killed_halfway_leaves_no_copy_to_keep(task: TaskPaths) -> None:
    data = _outputs_bytes()
    collect = Collect()
    answer = _follow(task, collect, threading.Thread(
        target=_write_slowly, args=(task, data), kwargs={"stop_at": len(data) // 2,
                                                         "end": State.LOST}))
    assert answer["final"] is False and answer["why"] == "the file stopped short"
    assert 0 < answer["size"] < len(data) and len(collect.data) == answer["size"]
    assert bytes(collect.data) == data[:answer["size"]]


def test_a_whole_file_that_never_became_the_outputs_is_not_kept(task: TaskPaths) -> None:
    data = _outputs_bytes()
    collect = Collect()
    answer = _follow(task, collect, threading.Thread(
        target=_write_slowly, args=(task, data), kwargs={"rename": False,
                                                         "end": State.FAILED}))
    assert answer == {"size": len(data), "final": False, "why": "not the outputs file"}


def test_the_kernel_speaking_ends_a_follow_that_waits(task: TaskPaths) -> None:
    spoke = threading.Event()
    threading.Timer(0.2, spoke.set).start()
    started = time.monotonic()
    answer = _follow(task, Collect(spoke))
    assert answer == {"size": 0, "final": False, "why": "stopped"}
    assert time.monotonic() - started < 5


def test_a_file_that_is_not_ours_is_an_error(task: TaskPaths) -> None:
    _temp(task).write_bytes(b"not a namespace file at all, but long enough to have a header")
    with pytest.raises(ValueError, match="not a remote_magic namespace file"):
        _follow(task, Collect())


def test_a_task_that_is_gone_ends_the_follow(tmp_path: Path) -> None:
    answer = _follow(TaskPaths(tmp_path / "tasks" / "never"), Collect())
    assert answer == {"size": 0, "final": False, "why": "no outputs file"}


@pytest.fixture
def agent(tmp_path: Path) -> Any:
    """The agent as a process over pipes (as OpenSSH carries it), and its client."""
    err = open(tmp_path / "agent.err", "wb")  # noqa: SIM115 - closed with the channel
    process = subprocess.Popen([sys.executable, "-m", "remote_magic.host.agent", "--workdir",
                                str(tmp_path / "work"), "--cold"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=err, bufsize=0)
    channel = ProcessChannel(process, err)
    status, _, leftover = _await_marker(channel)
    assert status is None
    client = AgentClient(_SSHChannel(channel, leftover), lambda event: None, "pipes")
    yield client, process
    client.close()
    process.wait(10)


def test_the_agent_follows_into_the_kernels_file(tmp_path: Path, agent: Any) -> None:
    client, _ = agent
    paths = make_task_dir(tmp_path / "work" / "tasks" / "abcdef02")
    set_state(paths, State.RUNNING, pid=os.getpid())
    data = _outputs_bytes()
    writer = threading.Thread(target=_write_slowly, args=(paths, data))
    writer.start()
    with open(tmp_path / "copy", "wb", buffering=0) as f:
        answer, _ = client.call("follow", {"task": "abcdef02", "min_size": MIN}, timeout=30,
                                sink=f.fileno())
    writer.join()
    assert answer == {"size": len(data), "final": True}
    assert (tmp_path / "copy").read_bytes() == data


def test_an_agent_following_stops_when_the_kernel_hangs_up(tmp_path: Path, agent: Any) -> None:
    client, process = agent
    paths = make_task_dir(tmp_path / "work" / "tasks" / "abcdef03")
    set_state(paths, State.RUNNING, pid=os.getpid())  # runs on, writes nothing
    answers: list[Any] = []
    waiting = threading.Thread(target=lambda: answers.append(client.call(
        "follow", {"task": "abcdef03", "min_size": MIN}, timeout=30)))
    waiting.start()
    time.sleep(0.3)
    process.stdin.close()  # the kernel's end of the session goes; its output pipe stays
    waiting.join(10)
    assert answers == [({"size": 0, "final": False, "why": "stopped"}, b"")]
    assert wait_for(lambda: process.poll() is not None, 5), "the agent follows for nobody"
