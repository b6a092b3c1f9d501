"""The host side of sweeps without a scheduler: many tasks staged in one request with their
shared inputs linked in, leftovers of purged sweeps removed, and an array task's taking over
of elements not started yet (run here with the index in the environment, as a job would)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from remote_magic.host.agent import Agent
from remote_magic.host.exchange import Exchange
from remote_magic.host.schedulers import job
from remote_magic.host.sweepops import UNUSED_BLOB
from remote_magic.wire.serialization import dump_namespace, load_namespace
from remote_magic.wire.states import State
from remote_magic.wire.taskdir import TaskPaths, read_json, read_state, set_state


def task_files(tmp: Path, task: str, code: str, values: dict[str, Any]) -> tuple[list, bytes]:
    folder = tmp / f"src-{task}"
    folder.mkdir()
    dump_namespace(values, folder / "inputs.rmns")
    spec = {"code": code, "filename": "<cell>", "inputs": sorted(values), "outputs": ["out"],
            "imports": {}, "last_expression": False, "shared": "x"}
    (folder / "spec.json").write_text(json.dumps(spec))
    files, data = [], b""
    for name in ("spec.json", "inputs.rmns"):
        raw = (folder / name).read_bytes()
        files.append({"name": name, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()})
        data += raw
    return files, data


def shared_blob(agent: Agent, tmp: Path, values: dict[str, Any]) -> str:
    dump_namespace(values, tmp / "shared.rmns")
    raw = (tmp / "shared.rmns").read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    assert agent.sweeps.op_shared_has([sha]) == [sha]
    (agent.workdir / "shared" / sha).write_bytes(raw)
    assert agent.sweeps.op_shared_has([sha]) == []
    return sha


def test_many_tasks_in_one_request_share_one_copy(agent: Agent, tmp_path: Path) -> None:
    sha = shared_blob(agent, tmp_path, {"base": 40})
    tasks, payload = [], b""
    for i in range(5):
        files, data = task_files(tmp_path, f"{i:016x}", "out = base + k", {"k": i})
        tasks.append({"task": f"{i:016x}", "files": files})
        payload += data
    answers = agent.sweeps.op_stage_many(
        Exchange(payload), tasks, [{"sha256": sha, "name": "shared.rmns", "copy": False}])
    assert set(answers) == {t["task"] for t in tasks}
    blob = agent.workdir / "shared" / sha
    assert blob.stat().st_nlink == 6  # the blob and a link in each task
    paths = TaskPaths(answers[f"{3:016x}"]["root"])
    assert load_namespace(paths.inputs) == {"k": 3}
    assert load_namespace(paths.shared) == {"base": 40}
    assert read_state(paths)["state"] == State.PREPARED


def test_a_missing_shared_file_or_a_name_outside_the_task_is_refused(agent: Agent,
                                                                    tmp_path: Path) -> None:
    files, data = task_files(tmp_path, "ab" * 8, "out = 1", {})
    with pytest.raises(FileNotFoundError, match="not on the host"):
        agent.sweeps.op_stage_many(Exchange(data), [{"task": "ab" * 8, "files": files}],
                                   [{"sha256": "0" * 64, "name": "shared.rmns"}])
    sha = shared_blob(agent, tmp_path, {})
    with pytest.raises(ValueError, match="outside the task directory"):
        agent.sweeps.op_stage_many(Exchange(data), [{"task": "ab" * 8, "files": files}],
                                   [{"sha256": sha, "name": "../../escape"}])
    with pytest.raises(ValueError, match="not the hash"):
        agent.sweeps.op_shared_has(["../etc/passwd"])


def test_leftovers_of_purged_sweeps_are_removed(agent: Agent, tmp_path: Path) -> None:
    sha = shared_blob(agent, tmp_path, {"a": 1})
    files, data = task_files(tmp_path, "cd" * 8, "out = 1", {})
    agent.sweeps.op_stage_many(Exchange(data), [{"task": "cd" * 8, "files": files}],
                               [{"sha256": sha, "name": "shared.rmns"}])
    blob = agent.workdir / "shared" / sha
    array = agent.workdir / "arrays" / "cdcd-1"  # as op_submit_array leaves one
    (array / ".let-go" / "1").mkdir(parents=True)
    os.symlink(agent.paths("cd" * 8).root, array / "0")
    os.symlink(array / ".let-go" / "1", array / "1")
    old = time.time() - UNUSED_BLOB - 10
    for path in (blob, array):
        os.utime(path, (old, old))
    agent.sweeps.sweep_leftovers(time.time())
    assert blob.exists() and array.exists()  # a task still links to it, and is in it
    agent.op_purge(["cd" * 8])
    agent.sweeps.sweep_leftovers(time.time())
    assert not blob.exists() and not array.exists()


def array_of(agent: Agent, tmp_path: Path, codes: list[str]) -> tuple[Path, list[TaskPaths]]:
    """Staged tasks and an array folder linking to them, as `op_submit_array` makes it."""
    sha = shared_blob(agent, tmp_path, {})
    folder = tmp_path / "array"
    folder.mkdir()
    found = []
    for i, code in enumerate(codes):
        task = f"{i + 1:016x}"
        files, data = task_files(tmp_path, task, code, {})
        root = agent.sweeps.op_stage_many(Exchange(data), [{"task": task, "files": files}],
                                          [{"sha256": sha, "name": "shared.rmns"}])[task]["root"]
        set_state(TaskPaths(root), State.SUBMITTED, launcher="slurm", job_id=f"77_{i}")
        os.symlink(root, folder / str(i))
        found.append(TaskPaths(root))
    return folder, found


def test_an_array_task_takes_over_the_elements_not_started(agent: Agent, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    folder, tasks = array_of(agent, tmp_path, ["import os\nout = os.environ["
                                               "'SLURM_ARRAY_TASK_ID']"] * 4)
    cancelled: list[list[str]] = []
    monkeypatch.setattr(job, "_quietly", cancelled.append)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    assert job.run_array(str(folder), "slurm", walltime=600) == 0
    states = [read_state(t) for t in tasks]
    assert [s["state"] for s in states] == ["completed"] * 4
    assert [s["job_id"] for s in states] == ["77_0"] * 4  # who ran each
    assert [load_namespace(t.outputs)["out"] for t in tasks] == ["0", "1", "2", "3"]
    assert cancelled == [["scancel", "77_3"], ["scancel", "77_2"], ["scancel", "77_1"]]
    assert all(t.exitcode.read_text().strip() == "0" for t in tasks[1:])
    # the own array task of a taken-over element, should it start, leaves without a word,
    # and its entry now points elsewhere: its job script's exit code cannot end the element
    before = tasks[2].state.read_bytes()
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert job.run_array(str(folder), "slurm", walltime=600) == 0
    assert tasks[2].state.read_bytes() == before
    assert read_json(tasks[2].job_claim)["taken_by"] == "77_0"
    assert os.path.realpath(folder / "2") != str(tasks[2].root)
    (folder / "2" / "exitcode").write_text("9\n")  # what its job script then writes
    assert tasks[2].exitcode.read_text() == "0\n" and \
        read_state(tasks[2])["state"] == "completed"  # the element's own, untouched


def test_nothing_is_taken_over_when_the_time_left_is_short(agent: Agent, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    folder, tasks = array_of(agent, tmp_path, ["out = 1"] * 3)
    monkeypatch.setattr(job, "_quietly", lambda argv: None)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    job.run_array(str(folder), "slurm", walltime=30)  # under a minute of margin
    assert [read_state(t)["state"] for t in tasks] == ["completed", "submitted", "submitted"]
    (tasks[2].root / "cancel").touch()  # cancelled: never taken over either
    job.run_array(str(folder), "slurm", walltime=3600)
    assert [read_state(t)["state"] for t in tasks] == ["completed", "completed", "submitted"]


def test_what_elements_record_while_their_array_is_submitted_is_kept(
        agent: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An array may start, and an element run, end, or be taken over, before the submit
    command has even returned: the job ids written afterwards never undo that."""
    from remote_magic.host import sweepops

    folder, tasks = array_of(agent, tmp_path, ["out = 1"] * 3)
    for paths in tasks:  # staged, not submitted (array_of submits them by hand)
        set_state(paths, State.PREPARED, launcher=None, job_id=None)
        paths.claim.unlink(missing_ok=True)
    ids = [t.root.name for t in tasks]

    def submit_and_run(batch: Any, script: str, path: Path, cwd: Path, what: str) -> str:
        assert all(read_state(t)["state"] == State.SUBMITTED for t in tasks)
        set_state(tasks[0], State.COMPLETED, job_id=None)  # ran at once
        set_state(tasks[2], State.RUNNING, job_id="55_0")  # taken over by element 0's job
        return "55"

    monkeypatch.setattr(sweepops, "submit_job", submit_and_run)
    answer = agent.sweeps.op_submit_array(ids, "slurm", {})
    assert answer["jobs"] == {ids[0]: "55_0", ids[1]: "55_1", ids[2]: "55_0"}
    states = [read_state(t) for t in tasks]
    assert [s["state"] for s in states] == ["completed", "submitted", "running"]
    assert [s["job_id"] for s in states] == ["55_0", "55_1", "55_0"]
