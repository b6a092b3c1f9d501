"""The agent's sweep operations: the elements of a sweep staged in one request, the inputs
they all share staged once, and all of them submitted as ONE job array.

A sweep of a thousand elements must not cost a thousand round trips, a thousand copies of a
large shared input, or a thousand jobs. What the elements share lives once per host under
`shared/<sha256>.rmns` in the work directory, and each element's directory gets a hard link
to it (`shared.rmns`): the runner reads it from the task's own private directory, and a blob
no task links to any more (its tasks purged) is removed by the agent's sweep of leftovers.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable

from ..wire.states import State
from ..wire.taskdir import (
    TaskPaths,
    amend_state,
    path_problem,
    read_state,
    set_state,
    valid_task_id,
)
from .batchops import BatchOps, runtime_command, submit_job
from .exchange import Exchange
from .fileops import FileOps, _inside, disk_full
from .schedulers import Array, scheduler_for
from .schedulers.units import walltime_seconds

SHARED = "shared"  # a work directory's folder of inputs shared by the elements of sweeps
ARRAYS = "arrays"  # ... and of job arrays' folders (links to their elements' task folders)
_BLOB = re.compile(r"[0-9a-f]{64}")
UNUSED_BLOB = 3600.0  # seconds a shared blob no task links to is kept (a sweep being staged)


def blob_name(sha256: str) -> str:
    if not isinstance(sha256, str) or not _BLOB.fullmatch(sha256):
        raise ValueError(f"not the hash of a shared file: {sha256!r}")
    return sha256


class SweepOps:
    """Stage many tasks at once, and submit many as one job array."""

    def __init__(self, workdir: Path, files: FileOps, batch: BatchOps,
                 paths: Callable[[str], TaskPaths],
                 start: Callable[[str], dict[str, Any]]) -> None:
        self.shared_dir = workdir / SHARED
        self.arrays_dir = workdir / ARRAYS
        self.workdir, self.files, self.batch = workdir, files, batch
        self.paths, self.start = paths, start

    def _blob(self, sha256: str) -> Path:
        """The shared blob's path, once its folder is known to be ours alone."""
        self.shared_dir.mkdir(mode=0o700, exist_ok=True)
        problem = path_problem(str(self.shared_dir), "private")
        if problem is not None:
            raise PermissionError(f"{self.shared_dir} could have been written by another "
                                  f"user ({problem.get('why', problem)}): remove it")
        return self.shared_dir / blob_name(sha256)

    def op_shared_has(self, files: list[str]) -> list[str]:
        """Which of these shared files (by sha256) the host lacks: the others are not sent."""
        missing = []
        for sha256 in files:
            blob = self._blob(sha256)
            if blob.is_file():
                os.utime(blob)  # in use again: the leftover sweep keeps it
            else:
                missing.append(sha256)
        return missing

    def op_stage_many(self, exchange: Exchange, tasks: list[dict[str, Any]],
                      shared: list[dict[str, Any]] = (), start: bool = False
                      ) -> dict[str, Any]:
        """Stage whole small tasks from one payload (each as `op_stage` with commit), each
        given the shared files ({"sha256", "name": its place in the task directory, "copy":
        whether the task gets a copy it may change, rather than a link}); with `start`, start
        each as `op_start` does. Answers per task, as those operations answer."""
        common = []
        for entry in shared:
            blob = self._blob(entry["sha256"])
            if not blob.is_file():
                raise FileNotFoundError(f"the shared file {entry['sha256'][:12]} for "
                                        f"{entry['name']} is not on the host")
            common.append((blob, entry["name"], bool(entry.get("copy"))))
        view = memoryview(exchange.payload)
        offset = 0
        answers: dict[str, Any] = {}
        for entry in tasks:
            task = valid_task_id(entry["task"])
            size = sum(f["size"] for f in entry["files"])
            part = Exchange(bytes(view[offset:offset + size]))
            offset += size
            answer = self.files.op_stage(part, task, entry["files"], size)
            if "staging" in answer:
                staging = self.workdir / answer["staging"]
                for blob, name, copy in common:
                    _place(blob, _inside(staging, name), copy)
                answer = self.files.op_commit(task, answer["staging"])
            if start and answer.get("existing") is None:
                answer["started"] = self.start(task)
            answers[task] = answer
        return answers

    def op_submit_array(self, tasks: list[str], scheduler: str, resources: dict[str, Any],
                        setup: str = "", python: str | None = None,
                        template: str | None = None, limit: int | None = None
                        ) -> dict[str, Any]:
        """Submit staged tasks as one job array; element i runs tasks[i].

        A task another kernel already started is left out (answered under "attached" with
        its state, as `op_submit` answers). Returns the array's job id and each submitted
        task's element id ("jobs")."""
        batch = scheduler_for(scheduler)
        claimed: list[str] = []
        attached: dict[str, Any] = {}
        try:
            for task in tasks:
                paths = self.paths(task)
                if not paths.spec.exists():
                    raise FileNotFoundError(f"task {task} is not staged (no spec in "
                                            f"{paths.root})")
                found = self.files.claim(paths, task)
                if found is None:
                    claimed.append(task)
                else:
                    attached[task] = {"state": found,
                                      "job_id": read_state(paths).get("job_id")}
            jobs = self._submit(batch, claimed, resources, setup, python, template, limit)
        except BaseException:
            for task in claimed:  # not submitted: a retry may claim them again
                self.paths(task).claim.unlink(missing_ok=True)
            raise
        return {"jobs": jobs, "attached": attached}

    def _submit(self, batch: Any, tasks: list[str], resources: dict[str, Any], setup: str,
                python: str | None, template: str | None, limit: int | None) -> dict[str, str]:
        if not tasks:
            return {}
        if len(tasks) == 1:  # an array of one is refused by some schedulers (PBS)
            return {tasks[0]: self.batch.op_submit(tasks[0], batch.name, resources, setup,
                                                   python, template)["job_id"]}
        self.arrays_dir.mkdir(mode=0o700, exist_ok=True)
        folder = self.arrays_dir / f"{tasks[0][:12]}-{secrets.token_hex(4)}"
        folder.mkdir(mode=0o700)
        for task in tasks:  # before the job exists: its elements may start at once
            set_state(self.paths(task), State.SUBMITTED, launcher=batch.name)
        try:
            for i, task in enumerate(tasks):
                os.symlink(self.paths(task).root, folder / str(batch.array_base + i))
            walltime = ["--walltime", str(walltime_seconds(resources["walltime"]))] \
                if resources.get("walltime") else []
            command = runtime_command(python, "remote_magic.host.schedulers.job", batch.name,
                                      "--array", str(folder), *walltime)
            array = Array(len(tasks), limit if limit and limit < len(tasks) else None)
            script = batch.render(template, resources, f"rm-{tasks[0][:12]}", str(folder),
                                  setup, command, array=array)
            job_id = submit_job(batch, script, folder / "job.sh", folder, "the job array")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            for task in tasks:
                set_state(self.paths(task), State.PREPARED, launcher=None)
            raise
        jobs = {}
        for i, task in enumerate(tasks):
            jobs[task] = batch.element_id(job_id, batch.array_base + i)
            # as the record is now: an element may have run, or been taken over (the job
            # that runs it then named itself), since the array was submitted
            record = amend_state(self.paths(task), "job_id", job_id=jobs[task], array=job_id)
            jobs[task] = record.get("job_id") or jobs[task]
        return jobs

    def sweep_leftovers(self, now: float) -> None:
        """Remove shared blobs no task links to any more, and array folders whose elements
        are all gone (purged)."""
        for folder, keep in ((self.shared_dir, _blob_in_use), (self.arrays_dir, _array_in_use)):
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                try:
                    if not keep(entry, now):
                        if entry.is_dir(follow_symlinks=False):
                            shutil.rmtree(entry.path, ignore_errors=True)
                        else:
                            os.unlink(entry.path)
                except OSError:
                    continue


def _blob_in_use(entry: os.DirEntry[str], now: float) -> bool:
    info = entry.stat(follow_symlinks=False)
    return info.st_nlink > 1 or now - info.st_mtime < UNUSED_BLOB


def _array_in_use(entry: os.DirEntry[str], now: float) -> bool:
    if now - entry.stat(follow_symlinks=False).st_mtime < UNUSED_BLOB:
        return True
    inside = os.path.realpath(entry.path) + os.sep  # entries let go point in here
    return any(os.path.exists(link.path) and not os.path.realpath(link.path).startswith(inside)
               for link in os.scandir(entry.path) if link.is_symlink())


def _place(blob: Path, target: Path, copy: bool) -> None:
    """A hard link takes no room; a file the task may change, or a file system without
    links, gets a copy. `target` is inside a fresh staging directory of ours."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not copy:
        try:
            os.link(blob, target)
            return
        except OSError as exc:
            if disk_full(exc):
                raise
    shutil.copyfile(blob, target)
