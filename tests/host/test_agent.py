"""The resident agent and the runner, driven directly over the agent protocol."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.waiting import wait_for

from remote_magic.client.transport.local import LocalTransport
from remote_magic.config.hosts import HostConfig
from remote_magic.errors import TransportError
from remote_magic.host.agent import _utf8_complete, read_chunk
from remote_magic.wire.protocol import FrameReader, encode
from remote_magic.wire.serialization import dump_namespace
from remote_magic.wire.taskdir import TaskPaths, set_state, write_json

TASK = "0123456789abcdef"


@pytest.fixture
def agent(home: Path) -> Any:
    events: list[dict[str, Any]] = []
    transport = LocalTransport(HostConfig(name="localhost", workdir=str(home / "work")),
                               events.append)
    client = transport.agent()
    client.events = events
    client.transport = transport
    yield client
    transport.close()


def stage(agent: Any, code: str, task: str = TASK,
          inputs: dict[str, Any] | None = None) -> TaskPaths:
    root = Path(agent.request("mkdir", task=task))
    paths = TaskPaths(root)
    dump_namespace(inputs or {}, paths.inputs)
    write_json(paths.spec, {"code": code, "filename": "<cell>", "inputs": sorted(inputs or {}),
                            "outputs": ["out"], "imports": {}, "last_expression": False})
    return paths


def wait_state(agent: Any, task: str, states: set[str], timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = agent.request("status", tasks={task: {"stdout": 0, "stderr": 0}})[task]
        if status["state"] in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"task never reached {states}: {status}")


def test_frames_survive_arbitrary_splits() -> None:
    data = encode({"id": 1, "text": "é" * 1000}) + encode({"event": "finished"}, b"xyz")
    reader = FrameReader()
    got = []
    for i in range(0, len(data), 7):
        got += reader.feed(data[i:i + 7])
    assert got == [({"id": 1, "text": "é" * 1000}, b""), ({"event": "finished"}, b"xyz")]


def test_output_chunks_never_split_a_character(tmp_path: Path) -> None:
    text = "aé€😀"
    raw = text.encode()
    for cut in range(len(raw) + 1):
        keep = _utf8_complete(raw[:cut])
        raw[:keep].decode()  # never raises
        assert keep >= cut - 3
    path = tmp_path / "out"
    path.write_bytes(raw)
    chunk, end = read_chunk(path, 0, limit=2)
    assert (chunk, end) == ("a", 1)


def test_task_runs_reports_and_finishes_with_event(agent: Any) -> None:
    paths = stage(agent, "print('hello')\nout = x + 1", inputs={"x": 41})
    agent.request("start", task=TASK)
    wait_state(agent, TASK, {"completed"})
    # The runner records "completed" a moment before its supervisor writes the exit code.
    deadline = time.monotonic() + 5
    while not agent.events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (agent.events[0]["event"], agent.events[0]["task"]) == ("finished", TASK)
    status = wait_state(agent, TASK, {"completed"})
    assert status["stdout"] == "hello\n"
    # the runner says it ended before it exits; its supervisor writes the exit code after
    assert wait_for(lambda: wait_state(agent, TASK, {"completed"})["exitcode"] == 0, 5)
    assert set(status["history"]) >= {"submitted", "running", "completed"}
    assert oct(paths.root.stat().st_mode & 0o777) == "0o700"
    with pytest.raises(TransportError, match="already started"):
        agent.request("start", task=TASK)


def test_the_end_of_a_task_comes_with_its_final_status(agent: Any) -> None:
    """The kernel need not ask again: the event carries the status and the output from where
    the kernel last read to."""
    stage(agent, "print('hi')\nimport time\ntime.sleep(1)\nprint('bye')")
    agent.request("start", task=TASK)
    assert wait_for(lambda: agent.request("status", tasks={TASK: None})[TASK]["state"]
                    == "running", 10)
    assert wait_for(lambda: "hi" in agent.request(
        "status", tasks={TASK: {"stdout": 0, "stderr": 0, "events": 0}})[TASK]["stdout"], 10)
    seen = agent.request("status", tasks={TASK: {"stdout": 0, "stderr": 0, "events": 0}})[TASK]
    assert seen["state"] == "running"
    assert wait_for(lambda: agent.events, 10)
    event = agent.events[0]
    assert event["from"] == {"stdout": seen["stdout_end"], "stderr": 0, "events": 0}
    assert event["status"]["state"] == "completed" and event["status"]["stdout"] == "bye\n"


def test_a_poll_that_finds_the_end_carries_the_small_result_files(agent: Any) -> None:
    """Whichever reaches the kernel first, the agent's event or the kernel's poll, brings the
    small result files along with the end: the kernel never has to ask for them."""
    stage(agent, "out = 'x' * 100", inputs={})
    agent.request("start", task=TASK)
    wait_state(agent, TASK, {"completed"})  # polled without push: the event carries nothing
    answers, payload = agent.call("status", {"tasks": {TASK: None}, "push": True})
    answer = answers[TASK]
    assert answer["state"] == "completed"
    assert {entry["name"] for entry in answer["files"]} >= {
        TaskPaths(".").state.name, TaskPaths(".").outputs.name}
    sizes = sum(entry["size"] for entry in answer["files"])
    assert answer["payload_from"] == 0 and len(payload) == sizes > 0
    without, nothing = agent.call("status", {"tasks": {TASK: None}})
    assert "files" not in without[TASK] and nothing == b""


def test_a_task_started_for_a_kernel_that_follows_it_ends_with_all_a_poll_would_bring(
        agent: Any) -> None:
    """Started with `push`, a task is followed from its start: its end comes with its whole
    output and its small result files though no status request came before it (the kernel
    skips the poll it would make at once)."""
    stage(agent, "print('hi')\nout = 'x' * 100")
    assert agent.request("start", task=TASK, push=True)["served"] is True
    assert wait_for(lambda: agent.events, 10)
    event = agent.events[0]
    assert event["from"] == {"stdout": 0, "stderr": 0, "events": 0}
    assert event["status"]["state"] == "completed" and event["status"]["stdout"] == "hi\n"
    assert TaskPaths(".").outputs.name in {entry["name"] for entry in event["files"]}
    assert len(event["payload"]) == sum(entry["size"] for entry in event["files"])
    stage(agent, "out = 1", task="fedcba9876543210")  # without push: the end alone
    assert "served" not in agent.request("start", task="fedcba9876543210")
    assert wait_for(lambda: len(agent.events) == 2, 10)
    assert agent.events[1] == {"event": "finished", "task": "fedcba9876543210"}


def test_a_run_that_replaces_an_ended_one_waits_for_its_supervisor(agent: Any) -> None:
    """The kernel hears of an end from the runner, before the supervisor's last writes: the
    same task staged again at once must not be written into by that supervisor."""
    import subprocess

    from remote_magic.host.fileops import pid_alive
    from remote_magic.wire.taskdir import read_json

    paths = stage(agent, "out = 1")
    agent.request("start", task=TASK)
    wait_state(agent, TASK, {"completed"})
    assert wait_for(lambda: paths.exitcode.exists(), 5)
    # a stand-in for the supervisor, still finishing (not our child: nothing here reaps it)
    lingering = int(subprocess.run(["sh", "-c", "sleep 1 & echo $!"], capture_output=True,
                                   text=True, check=True).stdout)
    pids = {k: v for k, v in read_json(paths.pids).items() if k != "keeper"}  # a cold one's
    write_json(paths.pids, {**pids, "supervisor": lingering})
    paths.result.unlink()  # its results gone: staging the task again replaces the directory
    agent.call("stage", {"task": TASK, "files": [], "commit": True})
    assert not pid_alive(lingering)


@pytest.mark.parametrize("exitcode", [True, False])
def test_a_run_that_replaces_an_ended_one_waits_for_its_keeper(agent: Any,
                                                              exitcode: bool) -> None:
    """A warm task's keeper supervises many and stays: it is done with a task once the exit
    code is written (its last write), and only until then does a new run wait for it."""
    import subprocess

    from remote_magic.host.fileops import pid_alive
    from remote_magic.wire.taskdir import read_json

    paths = stage(agent, "out = 1")
    agent.request("start", task=TASK)
    wait_state(agent, TASK, {"completed"})
    assert wait_for(lambda: paths.exitcode.exists(), 5)
    if not exitcode:
        paths.exitcode.unlink()
    lingering = int(subprocess.run(["sh", "-c", "sleep 1 & echo $!"], capture_output=True,
                                   text=True, check=True).stdout)
    write_json(paths.pids, {**read_json(paths.pids), "supervisor": lingering, "keeper": True})
    paths.result.unlink()
    agent.call("stage", {"task": TASK, "files": [], "commit": True})
    assert pid_alive(lingering) == exitcode


def test_a_whole_task_is_staged_and_started_in_one_request(agent: Any,
                                                            tmp_path: Path) -> None:
    """The kernel's fast path: the files inline, put in place and started by one request; a
    second such request for the same task attaches to the run instead of starting another."""
    import hashlib

    dump_namespace({}, tmp_path / "inputs.rmns")
    write_json(tmp_path / "spec.json", {"code": "out = 41 + 1", "filename": "<cell>",
                                        "inputs": [], "outputs": ["out"], "imports": {},
                                        "last_expression": False})
    data = [(name, (tmp_path / name).read_bytes()) for name in ("spec.json", "inputs.rmns")]
    files = [{"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
             for n, d in data]
    args = {"task": TASK, "files": files, "commit": True, "start": True}
    answer = agent.call("stage", args, b"".join(d for _, d in data))[0]
    assert "pid" in answer["started"] and "attached" not in answer["started"]
    again = agent.call("stage", args, b"".join(d for _, d in data))[0]
    assert again.get("existing") and again["started"].get("attached")
    wait_state(agent, TASK, {"completed"})
    # the runner records its outcome before its process has exited: the exit code follows
    assert wait_for(lambda: wait_state(agent, TASK, {"completed"})["exitcode"] == 0, 10)


def test_python_dying_hard_is_failed_with_reason(agent: Any) -> None:
    stage(agent, "import os\nos._exit(3)")
    agent.request("start", task=TASK)
    status = wait_state(agent, TASK, {"failed"})
    assert status["exitcode"] == 3 and "exited with code 3" in status["reason"]


def test_kill_cancels_whole_process_group(agent: Any) -> None:
    paths = stage(agent, "import subprocess\nsubprocess.run(['sleep', '60'])")
    agent.request("start", task=TASK)
    wait_state(agent, TASK, {"running"})
    time.sleep(0.3)
    assert agent.request("kill", tasks=[TASK]) == {TASK: "cancelling"}
    status = wait_state(agent, TASK, {"cancelled"})
    assert status["reason"] == "cancelled by the user"
    runner = json.loads(paths.pids.read_text())["runner"]
    assert live_members(runner) == []  # the `sleep` child went too (zombies aside)


def live_members(pgid: int) -> list[int]:
    """Processes of a group that are not zombies waiting for PID 1 to reap them."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def test_vanished_processes_make_a_task_lost(agent: Any) -> None:
    paths = stage(agent, "pass")
    set_state(paths, "running", launcher="process", host=os.uname().nodename)
    write_json(paths.pids, {"supervisor": 2 ** 22 + 12345, "runner": 2 ** 22 + 12346})
    status = agent.request("status", tasks={TASK: None})[TASK]
    assert status["state"] == "lost" and "gone" in status["reason"]


def test_missing_directory_and_bad_ids(agent: Any) -> None:
    status = agent.request("status", tasks={"fedcba9876543210": None})
    assert status["fedcba9876543210"]["state"] == "lost"
    for bad in ("../../etc", "fedcba9876543210\n", "FEDCBA9876543210", "fedcba9"):
        with pytest.raises(TransportError, match="not a valid task id"):
            agent.request("status", tasks={bad: None})
    with pytest.raises(TransportError, match="not staged"):
        agent.request("start", task="aaaaaaaaaaaaaaaa")


def test_purge_refuses_running_tasks(agent: Any) -> None:
    stage(agent, "import time\ntime.sleep(30)")
    agent.request("start", task=TASK)
    wait_state(agent, TASK, {"running"})
    assert "kill it first" in agent.request("purge", tasks=[TASK])[TASK]
    agent.request("kill", tasks=[TASK])
    wait_state(agent, TASK, {"cancelled"})
    assert agent.request("purge", tasks=[TASK]) == {TASK: "removed"}


def test_agent_death_is_reported_and_it_restarts(agent: Any) -> None:
    info = agent.request("hello")
    os.kill(info["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while agent.alive and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(TransportError, match="stopped"):
        agent.request("hello")
    fresh = agent.transport.agent()
    assert fresh.request("hello")["pid"] != info["pid"]
    assert fresh.request("hello")["python"].startswith("{}.{}".format(*sys.version_info[:2]))


def test_a_task_on_another_node_is_lost_only_when_its_heartbeat_stops(agent: Any) -> None:
    """A workdir on a shared filesystem: a task started by another node's agent cannot be
    asked about by pid here, so its heartbeat file decides; a silent one means the node died."""
    from remote_magic.host.batchops import STALE_HEARTBEAT
    paths = stage(agent, "pass")
    set_state(paths, "running", launcher="process", host="some-other-node")
    paths.heartbeat.touch()
    assert agent.request("status", tasks={TASK: None})[TASK]["state"] == "running"
    old = time.time() - STALE_HEARTBEAT - 5
    set_state(paths, "running", when=old - 60)  # began long before its last beat
    assert agent.request("status", tasks={TASK: None})[TASK]["state"] == "running"
    os.utime(paths.heartbeat, (old, old))
    answer = agent.request("status", tasks={TASK: None})[TASK]
    assert answer["state"] == "lost" and "no heartbeat" in answer["reason"]


def test_a_task_whose_first_beat_never_came_is_lost_from_its_running_time(agent: Any) -> None:
    """The first beat comes one interval after the start (a short task writes no heartbeat
    file); until then the time it began running stands for it, so a node that died at once
    is still found out."""
    from remote_magic.host.batchops import STALE_HEARTBEAT
    paths = stage(agent, "pass")
    set_state(paths, "running", launcher="process", host="some-other-node")
    assert not paths.heartbeat.exists()
    assert agent.request("status", tasks={TASK: None})[TASK]["state"] == "running"
    set_state(paths, "running", when=time.time() - STALE_HEARTBEAT - 5)
    answer = agent.request("status", tasks={TASK: None})[TASK]
    assert answer["state"] == "lost" and "no heartbeat" in answer["reason"]


def test_a_tree_is_removed_while_files_come_and_go(tmp_path: Path) -> None:
    """A purge meets a task's process still writing its exit code: a file renamed away or
    created during the walk does not make the removal fail."""
    import threading

    from remote_magic.host.agent import remove_tree

    root = tmp_path / "task"
    (root / "work").mkdir(parents=True)
    for n in range(300):
        (root / "work" / f"f{n}").write_text("x")

    def finishing() -> None:  # a process writing its exit code a few times, then gone
        for n in range(50):
            try:
                tmp = root / f".exitcode.{n}"
                tmp.write_text("0")
                tmp.rename(root / "exitcode")
            except OSError:  # its folder went first
                return

    worker = threading.Thread(target=finishing)
    worker.start()
    try:
        remove_tree(root)
    finally:
        worker.join()
    assert not root.exists()
