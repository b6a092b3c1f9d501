"""Warm runners (host/warm.py): a task starts in a runner forked ahead of it, from a process
that has imported what this host's tasks import, and each task still has a process of its own."""

from __future__ import annotations

import json
import os
import sys
import sysconfig
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.waiting import wait_for

from remote_magic import RemoteExecutor
from remote_magic.client.core import Client
from remote_magic.client.prepare import TaskOptions, prepare_cell
from remote_magic.errors import RemoteTaskError
from remote_magic.host import learned
from remote_magic.host.learned import MAX_NAMES, Learned, learnable, report
from remote_magic.wire.taskdir import TaskPaths, read_exitcode, read_state

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads the process tree from /proc")


# ---------------------------------------------------------------- the process tree

def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def state_of(pid: int) -> str:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ""
    return next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))


def children(pid: int, name: str | None = None) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:"))
        if int(ppid) == pid and (name is None or comm(int(entry.name)) == name):
            found.append(int(entry.name))
    return found


def ready_pair(agent: int) -> tuple[int, int, int] | None:
    """(warm process, its keeper, the keeper's waiting runner), once all three are up."""
    for warm in children(agent, "rm-warm"):
        for keeper in children(warm, "rm-keeper"):
            for waiting in children(keeper, "rm-ready-run"):
                return warm, keeper, waiting
    return None


def agent_pid() -> int:
    from remote_magic.client.core import get_client

    return int(get_client().hello("localhost")["pid"])


def warm_file(home: Path) -> dict[str, Any]:
    try:
        return json.loads((home / "work" / learned.FILE).read_text())
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- modules installed for a test

@pytest.fixture
def install() -> Iterator[Callable[[str], str]]:
    """Install a one-file module into this Python's site-packages (where learned modules
    must come from), under a name of its own; removed after the test."""
    site = Path(sysconfig.get_paths()["purelib"])
    made: list[Path] = []

    def put(source: str) -> str:
        name = f"rm_warmtest_{uuid.uuid4().hex[:10]}"
        path = site / f"{name}.py"
        path.write_text(source)
        made.append(path)
        return name

    yield put
    for path in made:
        path.unlink(missing_ok=True)
        for cached in (path.parent / "__pycache__").glob(f"{path.stem}.*"):
            cached.unlink(missing_ok=True)


RECORDS_PID = "import os\nIMPORTED_BY = os.getpid()\n"


def load(module: str) -> None:
    """Import `module` in the task (returning the module would import it here too)."""
    import importlib

    importlib.import_module(module)


def imported_by(module: str) -> tuple[int, int]:
    import importlib
    import os

    return importlib.import_module(module).IMPORTED_BY, os.getpid()


# ---------------------------------------------------------------- lifecycle

def test_a_task_runs_in_the_runner_forked_ahead_and_a_new_pair_replaces_it(home: Path) -> None:
    with RemoteExecutor("localhost", rerun=True) as pool:
        pool.submit(os.getpid).result(timeout=30)
        agent = agent_pid()
        assert wait_for(lambda: ready_pair(agent) is not None, 10)
        warm, keeper, waiting = ready_pair(agent)  # type: ignore[misc]
        assert pool.submit(os.getpid).result(timeout=30) == waiting
        assert wait_for(lambda: (pair := ready_pair(agent)) is not None
                        and pair[2] != waiting, 10)
        assert ready_pair(agent)[:2] == (warm, keeper)  # type: ignore[index]
        for _ in range(5):
            pool.submit(os.getpid).result(timeout=30)
        # every ended runner is reaped by the keeper: nothing under either is a zombie
        assert wait_for(lambda: all(state_of(p) != "Z"
                                    for p in children(warm) + children(keeper)), 10)
        assert wait_for(lambda: children(warm) == [keeper] and len(children(keeper)) == 1, 10)


def faults(pid: int) -> int:
    """Minor page faults so far of process `pid` (a page copied ahead counts as one)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def test_a_ready_runner_copies_ahead_the_pages_the_last_task_wrote(home: Path) -> None:
    with RemoteExecutor("localhost", rerun=True) as pool:
        agent = agent_pid()
        assert wait_for(lambda: ready_pair(agent) is not None, 10)
        before = faults(ready_pair(agent)[2])  # type: ignore[index]  # nothing to copy yet
        for _ in range(2):  # the first task's runner reports the pages it wrote
            pool.submit(os.getpid).result(timeout=30)

        def copied() -> bool:
            pair = ready_pair(agent)
            return pair is not None and faults(pair[2]) > before + 300

        assert wait_for(copied, 10), (before, ready_pair(agent))
        _, _, waiting = ready_pair(agent)  # type: ignore[misc]
        assert pool.submit(os.getpid).result(timeout=30) == waiting


def test_warm_process_and_ready_runner_end_with_the_agent_and_tasks_go_on(home: Path) -> None:
    client = Client()
    done = home / "done"
    prepared = prepare_cell(f"import time\ntime.sleep(2)\nopen({str(done)!r}, 'w').close()",
                            {}, client.host(), TaskOptions(nowait=True))
    record = client.submit(prepared).record
    agent = int(client.hello("localhost")["pid"])
    paths = TaskPaths(record.remote_dir)
    assert wait_for(lambda: read_state(paths)["state"] == "running", 10)
    # the runner waiting once the task was taken (the one seen before may be the one that
    # took it, renamed by then): the pair that is looked at is the pair that was found
    found: list[tuple[int, int, int] | None] = []
    assert wait_for(lambda: found.append(ready_pair(agent)) or found[-1] is not None, 10)
    warm, keeper, waiting = found[-1]  # type: ignore[misc]
    client.close()
    assert wait_for(lambda: not any(comm(p) for p in (agent, warm, waiting)), 10)
    assert wait_for(lambda: read_state(paths)["state"] == "completed", 20)
    # the keeper saw its running task to the end (the exit code is its last write), then ended
    assert done.exists() and wait_for(lambda: read_exitcode(paths) == 0, 10)
    assert wait_for(lambda: not comm(keeper), 10)


def test_a_warm_process_stuck_in_an_import_ends_with_the_agent(home: Path,
                                                                install: Any) -> None:
    """An import that never returns (here: only in the warm process) does not leave the warm
    process behind the agent: the kernel kills it when the agent ends."""
    stuck = install("import time\nif open('/proc/self/comm').read().strip() == 'rm-warm':\n"
                    "    time.sleep(600)\n")
    client = Client()
    try:
        with RemoteExecutor("localhost", rerun=True, client=client) as pool:
            pool.submit(load, stuck).result(timeout=30)
            assert wait_for(lambda: stuck in warm_file(home).get("modules", []), 10)
            warm = children(int(client.hello("localhost")["pid"]), "rm-warm")
            assert warm
        keepers = [k for w in warm for k in children(w, "rm-keeper")]
    finally:
        client.close()  # the agent ends; its warm process is in the import for ten minutes
    assert wait_for(lambda: not any(comm(p) == "rm-warm" for p in warm), 10)
    assert wait_for(lambda: not any(comm(p) == "rm-keeper" for p in keepers), 10)


STDLIB = ["colorsys", "wave", "fractions", "statistics", "difflib", "shlex", "calendar",
          "plistlib", "mailbox", "netrc", "pickletools", "filecmp", "graphlib", "zipapp",
          "sched", "quopri", "cmd", "codeop", "ftplib", "poplib", "imaplib", "smtplib",
          "tarfile", "gzip", "bz2", "lzma", "csv", "configparser", "optparse", "getopt"]


def test_tasks_taken_while_their_keeper_retires_are_seen_to_the_end(home: Path) -> None:
    """Each task imports a module the warm process has not: each report has it import that
    module and fork a new keeper, retiring the one whose runner may be taking a task at that
    moment. Every task is still supervised to its end (none is lost)."""
    with RemoteExecutor("localhost", rerun=True) as pool:
        futures = [pool.submit(load, name) for _ in range(3) for name in STDLIB]
        for future in futures:
            assert future.result(timeout=120) is None
    assert len(warm_file(home).get("modules", [])) >= 10
    # supervised: the exit code is the keeper's last write for a task
    tasks = [TaskPaths(home / "work" / "tasks" / f.task_id) for f in futures]  # type: ignore
    assert wait_for(lambda: all(read_exitcode(paths) == 0 for paths in tasks), 10)


def test_a_task_that_kills_its_runner_fails_and_the_next_one_runs(home: Path) -> None:
    def die() -> None:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)

    with RemoteExecutor("localhost", rerun=True) as pool:
        with pytest.raises(RemoteTaskError, match="SIGKILL"):
            pool.submit(die).result(timeout=30)
        assert pool.submit(pow, 2, 5).result(timeout=30) == 32


def test_a_task_killed_while_it_waits_for_a_runner_never_runs(home: Path) -> None:
    import signal
    import time

    ran = home / "ran"
    client = Client()
    agent = int(client.hello("localhost")["pid"])
    assert wait_for(lambda: ready_pair(agent) is not None, 10)
    _, keeper, _ = ready_pair(agent)  # type: ignore[misc]
    os.kill(keeper, signal.SIGSTOP)  # it forks no runner now: the second task must wait
    try:
        client.submit(prepare_cell("1", {}, client.host(), TaskOptions(nowait=True)))
        prepared = prepare_cell(f"open({str(ran)!r}, 'w').close()", {}, client.host(),
                                TaskOptions(nowait=True))
        record = client.submit(prepared).record
        assert client.kill([record])[record.id] in ("cancelled", "cancelling")
        paths = TaskPaths(record.remote_dir)
        assert wait_for(lambda: read_state(paths)["state"] == "cancelled", 10)
        time.sleep(2)  # past the moment it would have been started cold
    finally:
        os.kill(keeper, signal.SIGCONT)
        client.close()
    assert not ran.exists()


def test_tasks_do_not_wait_for_a_warm_process_busy_importing(home: Path, install: Any) -> None:
    slow = install("import time\ntime.sleep(20)\n")
    with RemoteExecutor("localhost", rerun=True) as pool:
        # learned from a task that paid the import itself (in the background, not waited)
        pool.submit(load, slow)
        assert wait_for(lambda: slow in warm_file(home).get("modules", []), 30)
        import time

        start = time.monotonic()
        assert [pool.submit(pow, 2, n).result(timeout=30) for n in range(3)] == [1, 2, 4]
        assert time.monotonic() - start < 10  # started cold, not after the 20 s import


# ---------------------------------------------------------------- learning

def test_modules_a_task_imported_are_imported_ahead_for_the_next(home: Path,
                                                                  install: Any) -> None:
    module = install(RECORDS_PID)
    with RemoteExecutor("localhost", rerun=True) as pool:
        by, task = pool.submit(imported_by, module).result(timeout=30)
        assert by == task  # the first task imports it itself
        assert wait_for(lambda: module in warm_file(home).get("modules", []), 10)

        def preloaded() -> bool:
            by, task = pool.submit(imported_by, module).result(timeout=30)
            return by != task

        assert wait_for(preloaded, 15)
        agent = agent_pid()
        assert wait_for(lambda: ready_pair(agent) is not None, 10)  # forked after the last
        assert pool.submit(imported_by, module).result(timeout=30)[0] == ready_pair(agent)[0]  # type: ignore[index]


def test_numpy_imported_ahead_draws_anew_and_multiplies_on_all_threads(home: Path) -> None:
    """NumPy's BLAS started its threads in the warm process; a forked task still multiplies
    (OpenBLAS restarts them after fork), and its global generator is seeded anew per task."""
    def draw() -> tuple[bool, float, float]:
        import sys

        ahead = "numpy.random" in sys.modules
        import numpy as np

        a = np.ones((400, 400))
        return ahead, float(np.random.rand()), float((a @ a).sum())

    with RemoteExecutor("localhost", rerun=True) as pool:
        assert wait_for(lambda: pool.submit(draw).result(timeout=30)[0], 20)
        draws = [pool.submit(draw).result(timeout=30) for _ in range(3)]
    assert all(ahead and product == 400.0 ** 3 for ahead, _, product in draws)
    assert len({value for _, value, _ in draws}) == 3


def test_a_module_that_starts_a_thread_on_import_is_left_out(home: Path, install: Any) -> None:
    threaded = install("import os, threading, time\nIMPORTED_BY = os.getpid()\n"
                       "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n")
    with RemoteExecutor("localhost", rerun=True) as pool:
        pool.submit(imported_by, threaded).result(timeout=30)
        assert wait_for(lambda: threaded in warm_file(home).get("unsafe", []), 15)
        assert threaded not in warm_file(home)["modules"]
        for _ in range(3):  # never imported ahead: the replacement warm process skips it
            by, task = pool.submit(imported_by, threaded).result(timeout=30)
            assert by == task
        agent = agent_pid()
        assert wait_for(lambda: ready_pair(agent) is not None, 10)


def test_only_installed_public_shallow_modules_are_learned(tmp_path: Path,
                                                           monkeypatch: Any) -> None:
    import types

    local = types.ModuleType("notebook_helpers")
    local.__file__ = str(tmp_path / "notebook_helpers.py")  # the notebook's own folder
    monkeypatch.setitem(sys.modules, "notebook_helpers", local)
    roots = learned.installed_roots()
    names = ["json", "email.mime", "pytest", "_pytest", "numpy.linalg", "numpy.linalg.linalg",
             "numpy._core", "notebook_helpers", "torch", "sys", "remote_magic.host"]
    import email.mime  # noqa: F401

    import numpy.linalg  # noqa: F401

    assert learnable(names, roots) == ["json", "pytest", "numpy.linalg"]


def test_learned_names_are_capped_and_kept_atomically(tmp_path: Path) -> None:
    known = Learned(tmp_path)
    new, dropped = known.add([f"m{i}" for i in range(MAX_NAMES + 30)])
    assert len(new) == MAX_NAMES + 30 and dropped == 30
    assert len(Learned(tmp_path).names) == MAX_NAMES  # what was saved
    new, dropped = known.add(["m0", "fresh"])
    assert new == ["fresh"] and known.names[:2] == ["m0", "fresh"] and dropped == 1
    known.mark_unsafe("fresh")
    assert known.add(["fresh", "torch.nn"]) == ([], 0)
    assert not list(tmp_path.glob("*.tmp*")) and sorted(p.name for p in tmp_path.iterdir()) \
        == [learned.FILE]
    (tmp_path / learned.FILE).write_text("{not json")
    assert Learned(tmp_path).names == []  # damaged: learned afresh, nothing raised


def test_a_report_fits_one_atomic_pipe_write() -> None:
    line = report([f"package_{i:04d}.subpackage_name" for i in range(1000)])
    assert len(line) <= 4096 and line.endswith(b"\n") and line.startswith(b"learn ")


def test_a_host_set_warm_false_starts_every_task_cold(home: Path) -> None:
    (home / "hosts.yaml").write_text(
        f"hosts:\n  localhost:\n    workdir: {home / 'work'}\n    warm: false\n")

    def forked_by() -> int:
        """The parent of this task's supervisor."""
        import os

        status = open(f"/proc/{os.getppid()}/status").read()
        return int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("PPid:")))

    with RemoteExecutor("localhost", rerun=True) as pool:
        for _ in range(2):
            assert pool.submit(forked_by).result(timeout=30) == agent_pid()
        assert children(agent_pid(), "rm-warm") == []
    assert not (home / "work" / learned.FILE).exists()


def test_the_agent_hears_each_end_once_and_skips_lines_it_cannot_read(tmp_path: Path) -> None:
    from remote_magic.host.warm import WarmPool

    pool = WarmPool(tmp_path, tmp_path)  # its pipes only: nothing is forked
    try:
        os.write(pool.events_w, b"garbage\nended x y\ntook 12 aaaa\nended 13 aaaa\n"
                                b"done 12 aaaa\ndone 14 bbbb\ntook 15 cc")
        # the runner's "ended" is heard; its supervisor's "done" only when no "ended" came
        assert pool.events() == ["aaaa", "bbbb"]
        assert pool.took == {}
        os.write(pool.events_w, b"cc\n")  # a line cut between two reads is joined
        assert pool.events() == [] and pool.took == {15: "cccc"}
    finally:
        for fd in (pool.task_r, pool.task_w, pool.events_r, pool.events_w):
            os.close(fd)


def test_a_runner_that_ended_before_its_keeper_read_took_is_still_recorded(
        tmp_path: Path) -> None:
    """A quick task can end, and its runner be reaped, before the keeper has read the line in
    which that runner said it took the task: the keeper reads it then, and records the end.
    The socket is dropped then, and its event from the same select() is let pass (in a burst
    that event once ended the keeper)."""
    import pickle
    import selectors
    import socket

    from remote_magic.host.keeper import Keeper
    from remote_magic.wire.states import State
    from remote_magic.wire.taskdir import set_state

    task = "ab" * 8
    paths = TaskPaths(tmp_path / task)
    paths.root.mkdir()
    set_state(paths, State.COMPLETED)  # what the runner wrote before it exited
    events_r, events_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a process of its own: the keeper reaps any child of the process it runs in
        try:
            ours, theirs = socket.socketpair()
            runner = os.fork()
            if runner == 0:
                theirs.sendall(f"took {task}\n".encode())
                os._exit(0)
            while not os.waitid(os.P_PID, runner, os.WEXITED | os.WNOWAIT):
                pass  # ended, not reaped yet
            keeper = Keeper(tmp_path, os.open(os.devnull, os.O_RDONLY), events_w, events_w,
                            theirs)
            keeper.retired = True  # it forks no runner here
            keeper.wake_r, _ = os.pipe()
            os.set_blocking(keeper.wake_r, False)
            keeper.selector = selectors.DefaultSelector()
            keeper.selector.register(ours, selectors.EVENT_READ)
            keeper.idle[ours], keeper.buffers[ours] = runner, b""
            keeper.reap()
            keeper.hear(ours)  # the select() that saw the reap named the dropped socket too
            os.write(out_w, pickle.dumps((runner, keeper.running, keeper.idle)))
        finally:
            os._exit(0)
    os.close(out_w)
    runner, running, idle = pickle.loads(os.read(out_r, 1 << 16))
    os.waitpid(pid, 0)
    assert read_exitcode(paths) == 0 and not running and not idle
    assert os.read(events_r, 1 << 16).decode() == f"done {runner} {task}\n"


def test_a_keeper_never_waits_for_a_runner_that_is_not_its_child(tmp_path: Path) -> None:
    """A safety net: a running task whose runner the keeper cannot wait for (reaped unnoticed)
    is finished on the next heartbeat tick, so the keeper still ends when it should."""
    import socket
    import time

    from remote_magic.host.keeper import Keeper, Running
    from remote_magic.wire.states import State
    from remote_magic.wire.taskdir import set_state

    task = "cd" * 8
    paths = TaskPaths(tmp_path / task)
    paths.root.mkdir()
    set_state(paths, State.RUNNING)
    events_r, events_w = os.pipe()
    ours, theirs = socket.socketpair()
    keeper = Keeper(tmp_path, os.open(os.devnull, os.O_RDONLY), events_w, events_w, theirs)
    stranger = os.getppid()  # alive, and not a child of this process
    keeper.running[stranger] = Running(task, paths, ours)
    keeper.beat(time.monotonic())
    assert not keeper.running
    assert os.read(events_r, 1 << 16).decode() == f"done {stranger} {task}\n"
    assert read_state(paths)["state"] == "failed"
