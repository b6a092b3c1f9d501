"""Grid Engine job arrays, live: the array script, submitted and followed with the scheduler
module's own commands on this machine's cell, each element writing into its own task folder
through the array folder's links.

Skipped only where Grid Engine cannot run (the `sge` fixture, as in tests/e2e/test_sge.py); in
CI that is a failure instead. Arrays are of three short elements at most.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from remote_magic.host.schedulers import Array, JobState
from remote_magic.host.schedulers.sge import Sge
from remote_magic.testing.schedulers import require_sge

SGE = Sge()


@pytest.fixture(scope="module")
def sge() -> Any:
    return require_sge()


@pytest.fixture
def jobs() -> Iterator[list[str]]:
    """Job ids a test submitted: whatever is left of them is deleted afterwards."""
    submitted: list[str] = []
    yield submitted
    if submitted:
        subprocess.run(["qdel", *submitted], capture_output=True, timeout=60)


def array_folder(root: Path, count: int) -> tuple[Path, list[Path]]:
    """`count` task-like folders (each with its `work` folder) and the array's folder whose
    entry i links to the i-th of them, as the agent lays them out."""
    folder = root / "array"
    folder.mkdir()
    tasks = []
    for i in range(count):
        task = root / f"task{i}"
        (task / "work").mkdir(parents=True)
        (folder / str(SGE.array_base + i)).symlink_to(task)
        tasks.append(task)
    return folder, tasks


def submit(folder: Path, runner: str, array: Array, held: bool = False) -> str:
    """Render the array's script into its folder and submit it as the agent does; the job id."""
    script = folder / "job.sh"
    script.write_text(SGE.render(None, {"walltime": "0:05:00"}, "rm-arraytest", str(folder),
                                 "", runner, array=array))
    command = SGE.submit_command(str(script))
    if held:  # a user hold, so that no element starts
        command = [*command[:-1], "-h", command[-1]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return SGE.job_id(done.stdout)


def status(element_ids: list[str]) -> dict[str, JobState]:
    """What qstat says about these elements' arrays (other users' jobs left aside): every
    answer about them must be keyed by one of the elements."""
    done = subprocess.run(SGE.status_command(element_ids), capture_output=True, text=True,
                          timeout=60)
    answer = SGE.read_status(element_ids, done.returncode, done.stdout, done.stderr)
    assert answer is not None, done.stderr
    arrays = {element.partition(".")[0] for element in element_ids}
    ours = {job: state for job, state in answer.items() if job.partition(".")[0] in arrays}
    assert set(ours) <= set(element_ids), ours
    return ours


def outcome(element_ids: list[str]) -> dict[str, JobState]:
    done = subprocess.run(SGE.outcome_command(element_ids), capture_output=True, text=True,
                          timeout=60)
    return SGE.read_outcome(element_ids, done.returncode, done.stdout, done.stderr)


def record_of(element: str) -> JobState | None:
    """The element's accounting record, once written (None before, or if qacct failed)."""
    found = outcome([element]).get(element)
    return found if found is not None and found.state else None


def cancel(element_ids: list[str]) -> None:
    done = subprocess.run(SGE.cancel_command(element_ids), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def until(what: Callable[[], Any], timeout: float = 90, every: float = 0.5) -> Any:
    """The first true value of `what()`, asked every `every` seconds; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting after {timeout:g} s"
        time.sleep(every)


def test_each_element_runs_in_its_own_task_folder(sge: Any, tmp_path: Path,
                                                   jobs: list[str]) -> None:
    folder, tasks = array_folder(tmp_path, 3)
    job = submit(folder, 'echo "$SGE_TASK_ID" > out; sleep 2', Array(3, 2))
    jobs.append(job)
    elements = [SGE.element_id(job, SGE.array_base + i) for i in range(3)]
    seen: dict[str, set[str]] = {element: set() for element in elements}

    def gone() -> bool:
        listed = status(elements)  # keyed by element
        for element, state in listed.items():
            seen[element].add(state.state)
        # never more than two at once (-tc 2)
        assert sum(state.state == "running" for state in listed.values()) <= 2
        return not listed

    until(gone, timeout=120, every=0.3)
    assert all(seen[element] & {"queued", "running"} for element in elements), seen
    for i, task in enumerate(tasks):
        # the scheduler's own output file and the script's, through the link
        assert (task / "job.out").exists() and (task / "job.err").exists()
        assert (task / "work" / "out").read_text().strip() == str(SGE.array_base + i)
        assert (task / "exitcode").read_text().strip() == "0"
    assert not list(folder.glob("*/*.tmp"))
    # accounting, per element, once its records are written
    records = until(lambda: (lambda found: found if set(found) == set(elements) and all(
        s.state for s in found.values()) else None)(outcome(elements)), timeout=60)
    assert all(record == JobState("completed", None, 0) for record in records.values())


def test_one_element_of_a_held_array_is_cancelled(sge: Any, tmp_path: Path,
                                                  jobs: list[str]) -> None:
    folder, _ = array_folder(tmp_path, 3)
    job = submit(folder, "sleep 60", Array(3), held=True)
    jobs.append(job)
    first, second, third = [SGE.element_id(job, SGE.array_base + i) for i in range(3)]
    # a held array is one qstat entry, a range; each element still gets its answer
    waiting = status([first, second, third])
    assert waiting == dict.fromkeys([first, second, third], JobState("queued", "hqw"))

    cancel([second])
    after = until(lambda: (lambda listed: listed if second not in listed else None)(
        status([first, second, third])), timeout=30)
    assert set(after) == {first, third}  # the others still wait

    cancel([first, third])  # several elements in one command
    until(lambda: not status([first, second, third]), timeout=30)
    # none of them ran, so accounting knows none of them: left out, not "unknown"
    assert outcome([first, second, third]) == {}


def test_a_running_element_is_cancelled_and_accounted_for(sge: Any, tmp_path: Path,
                                                          jobs: list[str]) -> None:
    folder, tasks = array_folder(tmp_path, 2)
    job = submit(folder, "sleep 60", Array(2, 1))
    jobs.append(job)
    first, second = [SGE.element_id(job, SGE.array_base + i) for i in range(2)]
    running = until(lambda: (lambda listed: listed if listed.get(first, JobState("")).state
                             == "running" else None)(status([first, second])), timeout=60)
    assert running[second] == JobState("queued", "qw")  # one at a time (-tc 1)
    # the element's node can be asked about it, as for a plain job
    probe = SGE.probe_command(first, running[first])
    assert probe is not None
    done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    assert SGE.read_probe(first, running[first], done.returncode, done.stdout,
                          done.stderr).alive is True

    cancel([first])
    record = until(lambda: record_of(first), timeout=60)
    assert record.state == "failed" and record.exit_code == 137  # killed (qdel)
    # the other element then has its turn; the array's own id cancels what is left
    until(lambda: status([second]).get(second, JobState("")).state == "running", timeout=60)
    cancel([job])
    until(lambda: not status([first, second]), timeout=60)
    assert (tasks[1] / "job.out").exists()  # it had started, in its own folder
