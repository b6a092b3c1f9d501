"""SLURM's job script and answers, without a cluster (the live tests cover the real thing)."""

from __future__ import annotations

import pytest

from remote_magic.host.schedulers.sge import Sge
from remote_magic.host.schedulers.slurm import Slurm, slurm_memory


def test_resources_become_sbatch_directives() -> None:
    script = Slurm().render(None, {"walltime": "0:30:00", "cores": 4, "mem": "8G", "gpus": 1,
                                   "partition": "gpu", "account": "proj", "nodes": 1},
                            "rm-abc", "/w/tasks/abc", "module load python", "python -m x")
    for line in ("#SBATCH --time=0:30:00", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=8192M",
                 "#SBATCH --gpus=1", "#SBATCH --partition=gpu", "#SBATCH --account=proj",
                 "#SBATCH --nodes=1", "#SBATCH --output=/w/tasks/abc/job.out",
                 "module load python", "python -m x"):
        assert line in script
    assert script.startswith("#!/bin/bash\n")
    assert "exitcode" in script.split("python -m x", 1)[1]  # written even if Python dies


@pytest.mark.parametrize("resources", [{"partition": "gpu\necho injected"},
                                       {"account": "a b"}, {"cores": "4"}, {"gpus": 0}])
def test_values_that_would_break_a_directive_line_are_refused(resources: dict) -> None:
    """Config and cell options are checked before this; the script is the last line of
    defence, since a newline in a value would start a command of its own."""
    with pytest.raises(ValueError):
        Slurm().resource_lines(resources, "rm-x", "/w/t")


@pytest.mark.parametrize("taskdir", ["/home/a b/t", "/w/it's", "/w/#t", "/w/t\nx"])
def test_a_task_directory_no_directive_can_hold_is_refused(taskdir: str) -> None:
    for scheduler in (Slurm(), Sge()):
        with pytest.raises(ValueError, match="cannot be a .* output path.*choose a host workdir"):
            scheduler.resource_lines({}, "rm-x", taskdir)


def test_a_host_template_gets_the_same_fields() -> None:
    template = "#!/bin/sh\n{directives}\n# {name} in {taskdir}\n{setup}\n{runner}\n"
    script = Slurm().render(template, {"cores": 2}, "rm-x", "/t", "ml py", "run it")
    assert "#SBATCH --cpus-per-task=2" in script and "# rm-x in /t" in script


@pytest.mark.parametrize(("value", "expected"), [
    ("8G", "8192M"), ("100M", "100M"), ("1.5GiB", "1536M"), (512, "512M"), ("2T", "2097152M"),
])
def test_memory_in_whole_megabytes(value: object, expected: str) -> None:
    assert slurm_memory(value) == expected


def test_job_id_from_sbatch_parsable() -> None:
    assert Slurm().job_id("1234\n") == "1234"
    assert Slurm().job_id("1234;cluster\n") == "1234"
    with pytest.raises(ValueError, match="no job id"):
        Slurm().job_id("sbatch: error: Batch job submission failed\n")


def test_squeue_states_and_reasons() -> None:
    jobs = Slurm().parse_status("12|PENDING|Resources\n13|RUNNING|None\n14|COMPLETING|None\n"
                                "15|TIMEOUT|TimeLimit\n16|OUT_OF_MEMORY|OutOfMemory\n")
    assert (jobs["12"].state, jobs["12"].reason) == ("queued", "Resources")
    assert jobs["13"].state == jobs["14"].state == "running"
    assert jobs["15"].state == "timed_out"
    assert (jobs["16"].state, jobs["16"].reason) == ("failed", "OutOfMemory")


def test_sacct_outcomes_keep_the_schedulers_reason() -> None:
    jobs = Slurm().parse_outcome("20|COMPLETED|0:0|None\n21|FAILED|1:0|NonZeroExitCode\n"
                                 "22|CANCELLED by 0|0:15|None\n23|TIMEOUT|0:15|TimeLimit\n"
                                 "24|OUT_OF_MEMORY|0:125|OutOfMemory\n")
    assert (jobs["20"].state, jobs["20"].exit_code) == ("completed", 0)
    assert (jobs["21"].state, jobs["21"].exit_code) == ("failed", 1)
    assert jobs["22"].state == "cancelled" and "signal 15" in jobs["22"].reason
    assert jobs["23"].state == "timed_out"
    assert jobs["24"].state == "failed" and "OUT_OF_MEMORY" in jobs["24"].reason


def test_an_sacct_record_without_its_end_is_asked_again() -> None:
    """A job that ends before slurmdbd has its start record is first stored with its final
    State but ExitCode 0:0 and End Unknown (CI read a failing job's sacct record so once)."""
    jobs = Slurm().parse_outcome("30|FAILED|0:0|None|Unknown\n"
                                 "31|FAILED|3:0|NonZeroExitCode|2026-12-03T05:34:06\n")
    assert jobs["30"].state == "" and "not recorded the end" in (jobs["30"].reason or "")
    assert (jobs["31"].state, jobs["31"].exit_code) == ("failed", 3)
    assert Slurm().outcome_command(["30"])[-1].endswith(",End")


def test_a_failed_squeue_is_no_answer_unless_it_names_the_job_unknown() -> None:
    """What squeue 22.05 printed here: the controller down (no answer: ask again), and one id
    the controller does not know (an answer: the job left the queue)."""
    down = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
    assert Slurm().read_status(["7"], 1, "", down) is None
    assert Slurm().read_status(["7"], 1, "", "slurm_load_jobs error: Invalid job id "
                                             "specified\n") == {}
    assert "-t" in Slurm().status_command(["7"])  # finished jobs stay listed (MinJobAge)


def test_array_elements_by_their_own_ids_and_collapsed_ranges() -> None:
    """squeue -r lists each element; accounting keeps one collapsed line for the elements
    of an array cancelled before they started (recorded on this machine's SLURM 22.05),
    which never overrides the lines of elements that ran."""
    slurm = Slurm()
    assert slurm.status_command(["12_0", "12_1", "13"])[6] == "12,13"
    queued = slurm.parse_status("617_0|PENDING|None\n617_1|RUNNING|None\n")
    assert queued["617_0"].state == "queued" and queued["617_1"].state == "running"
    ended = slurm.parse_outcome("665_0|COMPLETED|0:0|None|2026-12-04T19:05:01\n"
                                "665_1|CANCELLED by 0|0:15|None|2026-12-04T19:05:03\n"
                                "665_[0-5%3]|CANCELLED by 0|0:0|None|2026-12-04T19:05:03\n")
    assert ended["665_0"].state == "completed"
    assert [ended[f"665_{i}"].state for i in range(1, 6)] == ["cancelled"] * 5
    assert "665_[0-5%3]" not in ended
    assert Slurm().parse_outcome("7_[1,3-4]|CANCELLED|0:0|None|x\n").keys() == \
        {"7_1", "7_3", "7_4"}
    assert slurm.element_id("12", 3) == "12_3" and slurm.cancel_command(["12_3"]) == \
        ["scancel", "12_3"]
