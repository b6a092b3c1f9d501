"""The PBS and LSF scheduler modules, tested against output recorded on real clusters.

Neither scheduler runs here. The parsers read files under tests/data/pbs and tests/data/lsf,
each traced to its public source in that directory's SOURCES.md; files named `synthetic_*`
and the records derived in code below stand in for states no recorded output was found for,
and are labelled as such where they are used.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import TESTS

from remote_magic.host.schedulers import JobState, scheduler_for
from remote_magic.host.schedulers import lsf as lsf_module
from remote_magic.host.schedulers import pbs as pbs_module
from remote_magic.host.schedulers.lsf import Lsf
from remote_magic.host.schedulers.pbs import Pbs, memory_bytes, walltime_seconds

DATA = TESTS / "data"
TASKDIR = "/home/u/.remote_magic/tasks/0123abcd"
POLARIS = "polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"


def pbs_data(name: str) -> str:
    return (DATA / "pbs" / name).read_text()


def lsf_data(name: str) -> str:
    return (DATA / "lsf" / name).read_text()


def directives(scheduler: Any, resources: dict[str, Any], name: str = "rm-0123abcd") -> list[str]:
    return scheduler.resource_lines(resources, name, TASKDIR)


# --------------------------------------------------------------------------------------------
# Shared formats


@pytest.mark.parametrize(("value", "seconds"), [
    (90, 5400),                    # a bare int is minutes
    ("1:00:00", 3600),             # H:M:S
    ("30", 1800),                  # M
    ("5:30", 330),                 # M:S
    ("2-00:00:00", 172800),        # D-H:M:S
    ("1-12", 129600),              # D-H
    ("1-2:30", 95400),             # D-H:M
    ("48:00:00", 172800),          # hours beyond a day
])
def test_walltime_formats(value: Any, seconds: int) -> None:
    assert walltime_seconds(value) == seconds


@pytest.mark.parametrize("value", [0, -5, True, "", "1:75:00", "1:00:75", "1-25:00", "0:00:00",
                                   "1h", 1.5, None])
def test_walltime_refusals(value: Any) -> None:
    with pytest.raises(ValueError):
        walltime_seconds(value)


@pytest.mark.parametrize(("value", "size"), [
    (500, 500 * 1024**2),          # a bare int is megabytes
    ("8G", 8 * 1024**3),
    ("8GB", 8 * 1024**3),
    ("8GiB", 8 * 1024**3),
    ("8gi", 8 * 1024**3),
    ("500M", 500 * 1024**2),
    ("1.5G", 1536 * 1024**2),
    ("2048", 2048 * 1024**2),      # a unit-less string is megabytes too
    ("4096 K", 4096 * 1024),
    ("1T", 1024**4),
    ("512B", 512),
])
def test_memory_formats(value: Any, size: int) -> None:
    assert memory_bytes(value) == size


@pytest.mark.parametrize("value", [0, "0G", "0.1B", "lots", True, -1, None])
def test_memory_refusals(value: Any) -> None:
    with pytest.raises(ValueError):
        memory_bytes(value)


def test_scheduler_for_finds_both() -> None:
    assert isinstance(scheduler_for("pbs"), Pbs)
    assert isinstance(scheduler_for("lsf"), Lsf)
    assert (Pbs.name, Pbs.directive) == ("pbs", "#PBS")
    assert (Lsf.name, Lsf.directive) == ("lsf", "#BSUB")


# --------------------------------------------------------------------------------------------
# PBS: rendering


def test_pbs_name_and_output_files_only() -> None:
    assert directives(Pbs(), {}) == [
        "-N rm-0123abcd", f"-o {TASKDIR}/job.out", f"-e {TASKDIR}/job.err"]


def test_pbs_single_node() -> None:
    lines = directives(Pbs(), {"walltime": "1:00:00", "cores": 4, "mem": "8G",
                               "partition": "debug", "account": "myproj"})
    assert lines[3:] == ["-l walltime=01:00:00", "-l select=1:ncpus=4:mem=8gb",
                         "-q debug", "-A myproj"]


def test_pbs_several_nodes_with_gpus() -> None:
    lines = directives(Pbs(), {"walltime": "2-00:00:00", "nodes": 2, "cores": 32,
                               "mem": "1.5G", "gpus": 4})
    assert lines[3:] == ["-l walltime=48:00:00",
                         "-l select=2:ncpus=32:mem=1536mb:ngpus=4", "-l place=scatter"]


def test_pbs_minutes_memory_megabytes_and_bare_nodes() -> None:
    assert directives(Pbs(), {"walltime": 90, "mem": 500})[3:] == [
        "-l walltime=01:30:00", "-l select=1:mem=500mb"]
    assert directives(Pbs(), {"nodes": 3})[3:] == ["-l select=3", "-l place=scatter"]
    assert directives(Pbs(), {"walltime": "5:30", "mem": "512B"})[3:] == [
        "-l walltime=00:05:30", "-l select=1:mem=512b"]


def test_pbs_job_name_is_made_safe() -> None:
    assert directives(Pbs(), {}, name="my job[1]/x")[0] == "-N my_job_1__x"
    assert directives(Pbs(), {}, name="x" * 300)[0] == "-N " + "x" * 236


@pytest.mark.parametrize(("resources", "message"), [
    ({"cores": 0}, "cores"),
    ({"nodes": -1}, "nodes"),
    ({"gpus": True}, "gpus"),
    ({"mem": "0.1K"}, "whole number of bytes"),
    ({"walltime": "1:99:00"}, "minutes"),
    ({"partition": "two words"}, "partition"),
    ({"account": "a#b"}, "account"),
    ({"qos": "high"}, "unknown resource"),
])
def test_pbs_refusals(resources: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        directives(Pbs(), resources)


@pytest.mark.parametrize("taskdir", ["/home/a b/task", "/home/x:y/task", "/tmp/it's"])
def test_pbs_refuses_output_paths_it_cannot_write(taskdir: str) -> None:
    with pytest.raises(ValueError, match="output path"):
        Pbs().resource_lines({}, "job", taskdir)


def test_pbs_whole_script(tmp_path: Path) -> None:
    """The rendered script puts every directive before the first command and is valid bash;
    the job is not rerunnable (`-r n`: PBS must not run a cell twice after a node failure)."""
    script = Pbs().render(None, {"walltime": "0:10:00", "cores": 2}, "rm-1", TASKDIR,
                          "module load python", "python3 -m runner")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert lines[1:7] == ["#PBS -N rm-1", f"#PBS -o {TASKDIR}/job.out",
                          f"#PBS -e {TASKDIR}/job.err", "#PBS -l walltime=00:10:00",
                          "#PBS -l select=1:ncpus=2", "#PBS -r n"]
    assert lines[7] == "module load python"
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


# --------------------------------------------------------------------------------------------
# PBS: commands and ids


def test_pbs_commands() -> None:
    ids = [f"359322.{POLARIS}", f"412020.{POLARIS}"]
    assert Pbs().submit_command("/t/job.sh") == ["qsub", "/t/job.sh"]
    assert Pbs().status_command(ids) == ["qstat", "-f", "-F", "json", "-x", *ids]
    assert Pbs().cancel_command(ids) == ["qdel", *ids]
    assert Pbs().outcome_command(ids) is None
    assert Pbs().parse_outcome("") == {}
    with pytest.raises(ValueError):
        Pbs().status_command([])
    with pytest.raises(ValueError):
        Pbs().cancel_command([])


def test_pbs_job_id_from_real_qsub_output() -> None:
    assert Pbs().job_id(pbs_data("qsub_polaris.txt")) == f"2048766.{POLARIS}"


def test_pbs_job_id_after_a_site_notice() -> None:
    # The notice line is made up; the id line is the recorded one.
    output = "Job submitted to account: demo\n" + pbs_data("qsub_polaris.txt")
    assert Pbs().job_id(output) == f"2048766.{POLARIS}"


@pytest.mark.parametrize("output", ["", "qsub: Unknown queue\n", "qsub: would exceed limit"])
def test_pbs_job_id_refusal(output: str) -> None:
    with pytest.raises(ValueError, match="no job id"):
        Pbs().job_id(output)


# --------------------------------------------------------------------------------------------
# PBS: status from recorded qstat output


def test_pbs_queued_held_running_from_polaris() -> None:
    states = Pbs().parse_status(pbs_data("qstat_polaris_queued_held_running.json"))
    assert states == {
        f"359322.{POLARIS}": JobState(
            "queued", "Not Running: Job is requesting an exclusive node and node is in use"),
        # Held with an Exit_status from earlier failed runs: still waiting, not finished.
        f"412020.{POLARIS}": JobState("queued", "job held, too many failed attempts to run"),
        f"1147579.{POLARIS}": JobState("running", None),
    }


def test_pbs_completed_from_edtb() -> None:
    states = Pbs().parse_status(pbs_data("qstat_edtb_finished.json"))
    assert states == {"2154.edtb-01.mcp.alcf.anl.gov": JobState(
        "completed", "Job run at Mon Jan 24 at 08:39 on (edtb-01[0]:ncpus=1) and finished", 0)}


def test_pbs_answer_without_jobs_and_with_stderr_lines() -> None:
    """Polaris's answer for a finished id asked without -x: no Jobs key, a stderr line after."""
    assert Pbs().parse_status(pbs_data("qstat_polaris_finished_without_x.txt")) == {}
    assert Pbs().parse_status("") == {}


def test_pbs_recorded_answer_with_a_warning_line_in_front() -> None:
    noisy = "qstat: Unknown Job Id 1.x\n" + pbs_data("qstat_edtb_finished.json")
    assert Pbs().parse_status(noisy)["2154.edtb-01.mcp.alcf.anl.gov"].state == "completed"


def test_pbs_broken_json_is_an_error() -> None:
    truncated = pbs_data("qstat_edtb_finished.json")[:-20]
    with pytest.raises(ValueError, match="JSON"):
        Pbs().parse_status(truncated + "}")


def test_pbs_qstat_that_failed_is_no_answer_but_complaints_about_ids_are() -> None:
    """qstat exits non-zero both when it cannot reach the server (no answer: every job is
    asked about again) and when some ids are unknown or finished (the others still count)."""
    recorded = pbs_data("qstat_polaris_finished_without_x.txt")  # exit code 35 on Polaris
    stdout, _, complaint = recorded.partition("qstat: ")
    finished = "5487654." + POLARIS
    assert Pbs().read_status([finished], 35, stdout, "qstat: " + complaint) == {}
    edtb = pbs_data("qstat_edtb_finished.json")
    states = Pbs().read_status(["1.x", "2154.edtb-01.mcp.alcf.anl.gov"], 153, edtb,
                               "qstat: Unknown Job Id 1.x\n")
    assert set(states) == {"2154.edtb-01.mcp.alcf.anl.gov"}
    # Not recorded output: a server that does not answer, and an answer cut short.
    assert Pbs().read_status(["1.x"], 1, "", "qstat: cannot connect to server pbs01 "
                                             "(errno=15010)\n") is None
    assert Pbs().read_status(["1.x"], 0, edtb[:-20] + "}", "") is None


def test_pbs_finished_outcomes_synthetic() -> None:
    """SYNTHETIC records derived from qstat_edtb_finished.json (see pbs/SOURCES.md)."""
    states = Pbs().parse_status(pbs_data("synthetic_qstat_finished_outcomes.json"))
    edtb = ".edtb-01.mcp.alcf.anl.gov"

    failed = states["9001" + edtb]
    assert (failed.state, failed.exit_code) == ("failed", 1)
    assert failed.reason.startswith("exit status 1; Job run at")

    walltime = states["9002" + edtb]
    assert (walltime.state, walltime.exit_code) == ("timed_out", None)
    assert walltime.reason.startswith("JOB_EXEC_KILL_WALLTIME")

    deleted_running = states["9003" + edtb]
    assert (deleted_running.state, deleted_running.exit_code) == ("cancelled", None)

    deleted_queued = states["9004" + edtb]
    assert deleted_queued == JobState(
        "cancelled", "Not Running: Node is in an ineligible state: down and terminated")

    old_walltime = states["9005" + edtb]
    assert (old_walltime.state, old_walltime.exit_code) == ("timed_out", 143)
    assert "signal 15 after using its walltime" in old_walltime.reason

    memory = states["9006" + edtb]
    assert memory.state == "failed"
    assert memory.reason.startswith("JOB_EXEC_KILL_MEM: job exceeded mem (Exit_status -27)")

    killed = states["9007" + edtb]
    assert (killed.state, killed.exit_code) == ("failed", 137)
    assert killed.reason.startswith("killed by signal 9 (Exit_status 265)")


@pytest.mark.parametrize(("letter", "expected"), [
    ("W", "queued"), ("T", "queued"),
    ("E", "running"), ("B", "running"), ("S", "running"), ("U", "running"),
    ("X", "completed"),
    ("M", ""),
    ("Z", ""),
])
def test_pbs_other_state_letters_synthetic(letter: str, expected: str) -> None:
    """SYNTHETIC: the genuine Polaris Q job and edtb F job with only job_state changed."""
    polaris = json.loads(pbs_data("qstat_polaris_queued_held_running.json"))
    edtb = json.loads(pbs_data("qstat_edtb_finished.json"))
    base = (edtb["Jobs"]["2154.edtb-01.mcp.alcf.anl.gov"] if letter == "X"
            else polaris["Jobs"][f"359322.{POLARIS}"])
    job = dict(base, job_state=letter)
    state = pbs_module.job_state(job)
    assert state.state == expected
    if expected == "":
        assert state.reason


# --------------------------------------------------------------------------------------------
# LSF: rendering


def test_lsf_name_and_output_files_only() -> None:
    assert directives(Lsf(), {}) == [
        "-J rm-0123abcd", f"-o {TASKDIR}/job.out", f"-e {TASKDIR}/job.err"]


def test_lsf_single_node() -> None:
    lines = directives(Lsf(), {"walltime": "1:00:00", "cores": 4, "mem": "8G",
                               "partition": "normal", "account": "myproj"})
    assert lines[3:] == ["-W 1:00", "-n 4", '-R "rusage[mem=8GB] span[hosts=1]"',
                         "-q normal", "-P myproj"]


def test_lsf_several_nodes_with_gpus() -> None:
    lines = directives(Lsf(), {"walltime": "2-00:00:00", "nodes": 2, "cores": 32,
                               "mem": "1.5G", "gpus": 4})
    assert lines[3:] == ["-W 48:00", "-n 64", '-R "rusage[mem=1536MB] span[ptile=32]"',
                         '-gpu "num=4"']


def test_lsf_minutes_memory_alone_and_nodes_alone() -> None:
    assert directives(Lsf(), {"walltime": 90, "mem": 500})[3:] == [
        "-W 1:30", '-R "rusage[mem=500MB]"']
    assert directives(Lsf(), {"nodes": 3})[3:] == ["-n 3", '-R "span[ptile=1]"']
    assert directives(Lsf(), {"walltime": "45", "mem": "4096K"})[3:] == [
        "-W 0:45", '-R "rusage[mem=4MB]"']


def test_lsf_job_name_cannot_become_an_array() -> None:
    assert directives(Lsf(), {}, name="sweep[1-10]")[0] == "-J sweep_1-10_"


@pytest.mark.parametrize(("resources", "message"), [
    ({"walltime": "1:00:30"}, "whole minutes"),
    ({"walltime": "5:30"}, "whole minutes"),
    ({"mem": "512B"}, "kilobytes"),
    ({"mem": "0.5K"}, "kilobytes"),
    ({"cores": 0}, "cores"),
    ({"partition": 'q"x'}, "partition"),
    ({"constraint": "a100"}, "unknown resource"),
])
def test_lsf_refusals(resources: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        directives(Lsf(), resources)


@pytest.mark.parametrize("taskdir", ["/home/a b/task", "/tmp/100%J"])
def test_lsf_refuses_output_paths_it_cannot_write(taskdir: str) -> None:
    with pytest.raises(ValueError, match="output path"):
        Lsf().resource_lines({}, "job", taskdir)


def test_lsf_whole_script(tmp_path: Path) -> None:
    script = Lsf().render(None, {"cores": 2, "mem": "2G"}, "rm-1", TASKDIR, "", "python3 -m r")
    lines = script.splitlines()
    assert lines[1:7] == ["#BSUB -J rm-1", f"#BSUB -o {TASKDIR}/job.out",
                          f"#BSUB -e {TASKDIR}/job.err", "#BSUB -n 2",
                          '#BSUB -R "rusage[mem=2GB] span[hosts=1]"', "#BSUB -rn"]
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


# --------------------------------------------------------------------------------------------
# LSF: commands and ids


def test_lsf_commands() -> None:
    assert Lsf().status_command(["22005", "22006"]) == [
        "bjobs", "-json", "-o", "jobid stat exit_code exit_reason pend_reason", "-a",
        "22005", "22006"]
    assert Lsf().cancel_command(["22005"]) == ["bkill", "22005"]
    assert Lsf().outcome_command(["22005"]) is None
    with pytest.raises(ValueError):
        Lsf().status_command([])


def test_lsf_submit_feeds_the_script_on_stdin(tmp_path: Path) -> None:
    """The command runs without a shell of ours and hands bsub the script on its stdin.

    A stand-in `bsub` on PATH records its arguments and stdin, so this checks the mechanism
    (no real LSF here), including a path with characters a shell would otherwise interpret.
    """
    fake = tmp_path / "bin" / "bsub"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "args:$#"\ncat\n')
    fake.chmod(0o755)
    script = tmp_path / "task $(touch pwned); x" / "job.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/bash\n#BSUB -J rm-1\necho hi\n")
    command = Lsf().submit_command(str(script))
    assert command[:3] == ["/bin/sh", "-c", 'exec bsub < "$1"']
    result = subprocess.run(command, capture_output=True, text=True, check=True,
                            env={"PATH": f"{fake.parent}:/usr/bin:/bin"}, cwd=tmp_path)
    assert result.stdout == "args:0\n#!/bin/bash\n#BSUB -J rm-1\necho hi\n"
    assert not (tmp_path / "pwned").exists()


def test_lsf_job_id_from_real_bsub_output() -> None:
    assert Lsf().job_id(lsf_data("bsub_summit.txt")) == "1214764"


def test_lsf_job_id_after_wait_messages() -> None:
    # "Please wait" lines as LSF prints them while mbatchd is busy (text as in mskcc/beagle's
    # LSF client tests); the submission line is the recorded one.
    output = "Cannot connect to LSF. Please wait ...\n" + lsf_data("bsub_summit.txt")
    assert Lsf().job_id(output) == "1214764"


@pytest.mark.parametrize("output", ["", "short: User cannot use the queue. Job not submitted.\n"])
def test_lsf_job_id_refusal(output: str) -> None:
    with pytest.raises(ValueError, match="no job id"):
        Lsf().job_id(output)


# --------------------------------------------------------------------------------------------
# LSF: status from recorded bjobs output


def test_lsf_done_from_batcheuphoria() -> None:
    assert Lsf().parse_status(lsf_data("bjobs_batcheuphoria_done.json")) == {
        "22005": JobState("completed", None, 0)}


def test_lsf_exit_without_reason_from_batcheuphoria() -> None:
    states = Lsf().parse_status(lsf_data("bjobs_batcheuphoria_exit_done.json"))
    assert {job: s.state for job, s in states.items()} == {
        "487641": "failed", "487642": "failed", "488155": "failed",
        "491861": "completed", "491864": "completed", "491867": "completed"}
    assert states["487641"] == JobState("failed", "exited (no reason given)", None)


def test_lsf_running_from_summit() -> None:
    assert Lsf().parse_status(lsf_data("bjobs_summit_run.json")) == {
        "806290": JobState("running", None)}


def test_lsf_held_while_pending_from_summit() -> None:
    """The recorded Summit answer has no JOBID (not asked for), so the record is read alone."""
    document = json.loads(lsf_data("bjobs_summit_psusp.json"))
    assert Lsf().parse_status(lsf_data("bjobs_summit_psusp.json")) == {}
    assert lsf_module.job_state(document["RECORDS"][0]) == JobState("queued", "PSUSP")


def test_lsf_exit_reasons_synthetic() -> None:
    """SYNTHETIC records derived from bjobs_batcheuphoria_done.json (see lsf/SOURCES.md)."""
    states = Lsf().parse_status(lsf_data("synthetic_bjobs_exit_reasons.json"))
    assert states == {
        "22006": JobState("queued", "New job is waiting for scheduling"),
        "22007": JobState("cancelled", "TERM_OWNER: job killed by owner", None),
        "22008": JobState(
            "timed_out", "TERM_RUNLIMIT: job killed after reaching LSF run time limit", 140),
        "22009": JobState(
            "failed", "TERM_MEMLIMIT: job killed after reaching LSF memory usage limit", None),
        "22010": JobState("failed", "exit code 3", 3),
    }  # 22011 is an ERROR record: the queue forgot it, so it is left out


def test_lsf_bjobs_that_failed_is_no_answer_but_not_found_records_are() -> None:
    """bjobs may exit 255 for an id it has forgotten (the ERROR record in the SYNTHETIC file)
    and still answer for the others; without a JSON answer it could not be asked."""
    asked = [str(n) for n in range(22006, 22012)]
    states = Lsf().read_status(asked, 255, lsf_data("synthetic_bjobs_exit_reasons.json"), "")
    assert set(states) == set(asked) - {"22011"}
    assert Lsf().read_status(["22006"], 255, "", "Cannot connect to LSF. Please wait ...\n") \
        is None


def test_lsf_recorded_answer_with_wait_lines_in_front() -> None:
    noisy = "Cannot connect to LSF. Please wait ...\n" + lsf_data("bjobs_summit_run.json")
    assert Lsf().parse_status(noisy)["806290"].state == "running"
    assert Lsf().parse_status("Job <1> is not found\n") == {}


@pytest.mark.parametrize(("stat", "expected"), [
    ("WAIT", "queued"), ("PROV", "queued"),
    ("USUSP", "running"), ("SSUSP", "running"), ("UNKWN", "running"), ("ZOMBI", "running"),
    ("PDONE", ""),
])
def test_lsf_other_states_synthetic(stat: str, expected: str) -> None:
    """SYNTHETIC: the genuine Summit RUN record with only STAT changed."""
    record = copy.deepcopy(json.loads(lsf_data("bjobs_summit_run.json"))["RECORDS"][0])
    record["STAT"] = stat
    state = lsf_module.job_state(record)
    assert state.state == expected
    if stat != "RUN":
        assert stat in (state.reason or "")
