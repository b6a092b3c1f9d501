"""An allocation's worker, run here by hand (no scheduler): the queue, the link and its
handshake, slots, kills, stop, and an agent serving the allocation. The worker as a batch
job on the live SLURM and Grid Engine is in tests/e2e/test_alloc.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.waiting import wait_for

from remote_magic.client.transport.local import LocalTransport
from remote_magic.config.hosts import HostConfig
from remote_magic.errors import TransportError
from remote_magic.host.allocation import GREETING, AllocPaths, allocation_paths, proof
from remote_magic.host.allocops import WorkerLink
from remote_magic.wire.serialization import dump_namespace
from remote_magic.wire.taskdir import TaskPaths, make_task_dir, read_state, write_json


def hand_made(workdir: Path, slots: int = 1, name: str = "gpu") -> AllocPaths:
    """An allocation's folder as the agent makes it before it submits the worker's job."""
    paths = allocation_paths(workdir, name)
    paths.make()
    write_json(paths.spec, {"name": name, "scheduler": "slurm", "slots": slots, "resources": {},
                            "submitted": time.time(), "job_id": "999999999"})
    return paths


def start_worker(paths: AllocPaths, workdir: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "remote_magic.host.worker",
                                str(paths.root), "--workdir", str(workdir)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: paths.worker.exists() or process.poll() is not None, 30)
    return process


@pytest.fixture
def alloc(home: Path) -> Iterator[tuple[AllocPaths, subprocess.Popen[bytes]]]:
    workdir = home / "work"
    paths = hand_made(workdir, slots=1)
    worker = start_worker(paths, workdir)
    yield paths, worker
    worker.kill()
    worker.wait()


@pytest.fixture
def agent(home: Path) -> Iterator[Any]:
    """An agent serving allocation `gpu` (as `-q gpu` starts one), over its pipe."""
    events: list[dict[str, Any]] = []
    transport = LocalTransport(HostConfig(name="gpu", workdir=str(home / "work"),
                                          allocation="gpu"), events.append)
    client = transport.agent()
    client.events = events
    yield client
    transport.close()


def task(workdir: Path, code: str, number: int = 0) -> tuple[str, TaskPaths]:
    task_id = f"{number:016x}"
    paths = make_task_dir(workdir / "tasks" / task_id)
    dump_namespace({}, paths.inputs)
    write_json(paths.spec, {"code": code, "filename": "<cell>", "inputs": [], "outputs": [],
                            "imports": {}, "last_expression": False})
    return task_id, paths


def state(paths: TaskPaths) -> str:
    return read_state(paths)["state"]


ANCESTORS = """import os
pid, chain = os.getpid(), []
while pid > 1:
    pid = int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])
    chain.append(pid)
print(*chain)"""


def test_a_task_sent_to_the_allocation_runs_in_its_worker_and_its_end_is_pushed(
        alloc: Any, agent: Any, home: Path) -> None:
    paths, worker = alloc
    task_id, task_paths = task(home / "work", ANCESTORS)
    assert agent.request("start", task=task_id) == {"pid": None}
    assert wait_for(lambda: any(e.get("task") == task_id for e in agent.events), 30)
    record = read_state(task_paths)
    assert record["state"] == "completed"
    assert (record["launcher"], record["allocation"]) == ("allocation", "gpu")
    # it ran in a process the worker started (its keeper's runner, or a cold one)
    assert worker.pid in map(int, task_paths.stdout.read_text().split())


def test_tasks_start_from_the_queue_with_no_link_at_all(alloc: Any, home: Path) -> None:
    """A site that lets no login node reach a compute node: the queue folder alone works."""
    paths, _ = alloc
    task_id, task_paths = task(home / "work", "x = 1")
    paths.enqueue(task_id)
    assert wait_for(lambda: state(task_paths) == "completed", 30)
    assert not paths.waiting()


def test_no_more_tasks_run_at_once_than_the_allocation_has_slots(alloc: Any,
                                                                  home: Path) -> None:
    paths, _ = alloc  # one slot
    code = ("import time\nopen('when', 'a').write(f'{time.time()} ')\ntime.sleep(0.4)\n"
            "open('when', 'a').write(f'{time.time()}')")
    tasks = [task(home / "work", code, n) for n in range(3)]
    for task_id, _ in tasks:
        paths.enqueue(task_id)
    assert wait_for(lambda: all(state(p) == "completed" for _, p in tasks), 60)
    spans = sorted(tuple(map(float, (p.work / "when").read_text().split())) for _, p in tasks)
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:]))


def test_kill_takes_a_waiting_task_off_the_queue_and_stops_a_running_one(
        alloc: Any, agent: Any, home: Path) -> None:
    paths, _ = alloc  # one slot: the second task waits for the first
    running, running_paths = task(home / "work", "import time\ntime.sleep(60)", 1)
    waiting, waiting_paths = task(home / "work", "open('ran', 'w').close()", 2)
    agent.request("start", task=running)
    assert wait_for(lambda: state(running_paths) == "running", 30)
    agent.request("start", task=waiting)
    status = agent.request("status", tasks={waiting: None})[waiting]
    assert status["state"] == "submitted"
    assert status["reason"] == "waiting for a free slot on allocation gpu (1 at once)"
    assert agent.request("kill", tasks=[waiting]) == {waiting: "cancelled"}
    assert agent.request("kill", tasks=[running]) == {running: "cancelling"}
    assert wait_for(lambda: state(running_paths) == "cancelled", 20)
    time.sleep(1)
    assert state(waiting_paths) == "cancelled" and not (waiting_paths.work / "ran").exists()


def test_a_kill_with_no_link_is_seen_by_the_worker_in_the_cancel_file(alloc: Any,
                                                                      home: Path) -> None:
    paths, _ = alloc
    task_id, task_paths = task(home / "work", "import time\ntime.sleep(60)")
    paths.enqueue(task_id)
    assert wait_for(lambda: state(task_paths) == "running", 30)
    task_paths.cancel.touch()
    assert wait_for(lambda: state(task_paths) == "cancelled", 20)


def test_stop_cancels_the_running_tasks_and_ends_the_worker(alloc: Any, agent: Any,
                                                            home: Path) -> None:
    paths, worker = alloc
    task_id, task_paths = task(home / "work", "import time\ntime.sleep(60)")
    agent.request("start", task=task_id)
    assert wait_for(lambda: state(task_paths) == "running", 30)
    stopped = agent.request("alloc_stop", name="gpu")
    assert stopped["state"] == "ended" and stopped["reason"] == "cancelled: stopped by the user"
    assert worker.wait(timeout=20) == 0
    assert state(task_paths) == "cancelled"
    # an ended allocation takes no new task, and says what to do instead
    later, _ = task(home / "work", "x = 1", 7)
    with pytest.raises(TransportError, match="allocation gpu has ended .*%remote_alloc gpu"):
        agent.request("start", task=later)
    assert agent.request("alloc_list")[0]["state"] == "ended"


def test_a_peer_that_cannot_prove_it_knows_the_secret_is_dropped(alloc: Any) -> None:
    paths, _ = alloc
    where = json.loads(paths.worker.read_text())
    for said in (b"0" * 64 + b" " + b"1" * 32 + b"\n", b"x" * 1000):
        with socket.create_connection((where["address"], where["port"]), timeout=5) as sock:
            greeting = sock.recv(256)
            assert greeting.startswith(GREETING + b" ")
            sock.sendall(said)
            assert sock.recv(256) == b""  # closed, with no word
    # the right proof is answered with the worker's own
    with socket.create_connection((where["address"], where["port"]), timeout=5) as sock:
        nonce = sock.recv(256).split()[-1].decode()
        sock.sendall(f"{proof(paths.key(), nonce, 'agent')} {'ab' * 16}\n".encode())
        assert sock.recv(256) == f"ok {proof(paths.key(), 'ab' * 16, 'worker')}\n".encode()


def test_an_agent_does_not_trust_a_worker_that_cannot_prove_itself(alloc: Any) -> None:
    """A stale address file could point at someone else's port: the worker proves itself."""
    paths, _ = alloc
    assert WorkerLink.reach(paths) is not None
    where = json.loads(paths.worker.read_text())
    impostor = socket.create_server(("127.0.0.1", 0))
    write_json(paths.worker, {**where, "address": "127.0.0.1",
                              "port": impostor.getsockname()[1]})
    import threading

    def answer() -> None:
        conn, _ = impostor.accept()
        conn.sendall(GREETING + b" " + b"ab" * 16 + b"\n")
        conn.recv(256)
        conn.sendall(b"ok " + b"0" * 64 + b"\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    assert WorkerLink.reach(paths) is None
    impostor.close()


def test_a_secret_others_can_read_is_refused(home: Path) -> None:
    paths = hand_made(home / "work")
    assert paths.secret.stat().st_mode & 0o777 == 0o600
    os.chmod(paths.secret, 0o644)
    worker = start_worker(paths, home / "work")
    assert worker.wait(timeout=30) != 0
    assert b"mode 0600" in worker.stderr.read()
    assert not paths.worker.exists()
    assert WorkerLink.reach(paths) is None
    assert json.loads(paths.ended.read_text())["state"] == "failed"


@pytest.mark.parametrize("scheduler, submit, recorded, job_id, directive", [
    ("pbs", "qsub", "pbs/qsub_polaris.txt", None, "#PBS"),
    ("lsf", "bsub", "lsf/bsub_summit.txt", "1214764", "#BSUB"),
])
def test_pbs_and_lsf_get_the_worker_job_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            scheduler: str, submit: str, recorded: str,
                                            job_id: str | None, directive: str) -> None:
    """No PBS or LSF here: a stand-in submit command on PATH keeps the job script it was
    given and answers with the real output recorded on a cluster (tests/data/SOURCES.md)."""
    from helpers import TESTS

    from remote_magic.host.agent import Agent
    from remote_magic.host.schedulers import scheduler_for

    output = TESTS / "data" / recorded
    fake = tmp_path / "bin" / submit
    fake.parent.mkdir()
    keep = tmp_path / "script"
    fake.write_text(f'#!/bin/sh\nif [ $# -gt 0 ]; then cat "$1"; else cat; fi > {keep}\n'
                    f'cat {output}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    agent = Agent(str(tmp_path / "work"))
    started = agent.allocs.op_alloc_start("big", scheduler, {"walltime": "1:00:00", "cores": 4})
    expected = job_id or scheduler_for(scheduler).job_id(output.read_text())
    assert started["job_id"] == expected and started["slots"] == 4
    script = keep.read_text()
    assert f"{directive} " in script and "-m remote_magic.host.worker" in script
    assert str(tmp_path / "work" / "allocs" / "big") in script


def test_a_hosts_own_template_makes_the_worker_job(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from remote_magic.host.agent import Agent

    fake = tmp_path / "bin" / "qsub"
    fake.parent.mkdir()
    keep = tmp_path / "script"
    fake.write_text(f'#!/bin/sh\ncat "$1" > {keep}\necho 4242.pbs01\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    template = "#!/bin/bash\n{directives}\n#PBS -A site-project\nmodule load x\n{runner}\n"
    started = Agent(str(tmp_path / "work")).allocs.op_alloc_start(
        "own", "pbs", {"walltime": "0:30:00"}, template=template)
    assert started["job_id"] == "4242.pbs01" and started["state"] == "queued"
    script = keep.read_text()
    assert "#PBS -A site-project\nmodule load x\n" in script
    assert "-m remote_magic.host.worker" in script.split("module load x\n", 1)[1]


def test_an_allocation_folder_others_could_write_is_not_used(tmp_path: Path) -> None:
    from remote_magic.host.agent import Agent
    from remote_magic.wire.taskdir import Refusal

    agent = Agent(str(tmp_path / "work"))
    paths = hand_made(tmp_path / "work")
    os.chmod(paths.root, 0o755)
    with pytest.raises(Refusal, match="open to other users"):
        agent.allocs.op_alloc_stop("gpu")
    os.chmod(paths.root, 0o700)
    os.chmod(paths.root.parent, 0o777)
    with pytest.raises(Refusal, match="can be changed by other users"):
        agent.allocs.op_alloc_list()
