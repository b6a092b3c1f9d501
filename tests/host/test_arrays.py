"""Job arrays on Grid Engine, PBS and LSF: the array script, element ids, and reading the
schedulers' answers about elements, without a cluster (tests/host/test_arrays_sge.py runs
the Grid Engine part for real).

PBS and LSF answers are files under tests/data/pbs and tests/data/lsf, each traced to its
public source in that directory's SOURCES.md; files named `synthetic_*`, and the records
changed in code below, are NOT recorded output and say so where they are used. The Grid
Engine answers here were recorded on this machine's cell (SGE 8.1.9), trimmed where noted.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import TESTS

from remote_magic.host.schedulers import Array, JobState
from remote_magic.host.schedulers.lsf import Lsf
from remote_magic.host.schedulers.pbs import Pbs
from remote_magic.host.schedulers.sge import Sge, index_list

DATA = TESTS / "data"
FOLDER = "/home/u/.remote_magic/arrays/0123abcd4567-89abcdef"  # the array's folder of links
SWEEP = Array(100, 5)  # a hundred elements, five at a time


def pbs_data(name: str) -> str:
    return (DATA / "pbs" / name).read_text()


def lsf_data(name: str) -> str:
    return (DATA / "lsf" / name).read_text()


def array_script(scheduler: Any, tmp_path: Path, array: Array = SWEEP,
                 name: str = "rm-0123abcd4567") -> list[str]:
    """The rendered array script's lines, after checking that bash can parse it."""
    script = scheduler.render(None, {"walltime": "0:10:00"}, name, FOLDER,
                              "module load python", "python3 -m runner", array=array)
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    return script.splitlines()


def body_uses(lines: list[str], variable: str) -> None:
    """The script body works in the element's own task directory, through the link."""
    assert f'cd {FOLDER}/"${variable}"/work' in lines
    assert any(f'{FOLDER}/"${variable}"/exitcode' in line for line in lines)


# --------------------------------------------------------------------------------------------
# Grid Engine


def test_sge_array_script(tmp_path: Path) -> None:
    lines = array_script(Sge(), tmp_path)
    assert lines[1:9] == ["#$ -N rm-0123abcd4567", f"#$ -o {FOLDER}/$TASK_ID/job.out",
                          f"#$ -e {FOLDER}/$TASK_ID/job.err", "#$ -S /bin/bash",
                          "#$ -l h_rt=0:10:00", "#$ -t 1-100", "#$ -tc 5", "#$ -r no"]
    body_uses(lines, "SGE_TASK_ID")
    assert "#$ -tc" not in "\n".join(array_script(Sge(), tmp_path, Array(100)))
    assert Sge().array_base == 1


def test_sge_element_ids_from_the_recorded_submission() -> None:
    # what `qsub -terse` printed here for an array of three
    job = Sge().job_id("125.1-3:1\n")
    assert job == "125"
    assert [Sge().element_id(job, Sge().array_base + i) for i in range(3)] == [
        "125.1", "125.2", "125.3"]


# `qstat -xml` while two elements ran and the third waited (-tc 2); recorded, unchanged.
SGE_RUNNING_AND_WAITING = """<?xml version='1.0'?>
<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <job_list state="running">
      <JB_job_number>125</JB_job_number>
      <JAT_prio>0.50000</JAT_prio>
      <JB_name>rm-probe</JB_name>
      <JB_owner>root</JB_owner>
      <state>r</state>
      <JAT_start_time>2026-12-04T19:00:31</JAT_start_time>
      <queue_name>all.q@vm</queue_name>
      <slots>1</slots>
      <tasks>1</tasks>
    </job_list>
    <job_list state="running">
      <JB_job_number>125</JB_job_number>
      <JAT_prio>0.50000</JAT_prio>
      <JB_name>rm-probe</JB_name>
      <JB_owner>root</JB_owner>
      <state>r</state>
      <JAT_start_time>2026-12-04T19:00:31</JAT_start_time>
      <queue_name>all.q@vm</queue_name>
      <slots>1</slots>
      <tasks>2</tasks>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>125</JB_job_number>
      <JAT_prio>0.00000</JAT_prio>
      <JB_name>rm-probe</JB_name>
      <JB_owner>root</JB_owner>
      <state>qw</state>
      <JB_submission_time>2026-12-04T19:00:31</JB_submission_time>
      <queue_name></queue_name>
      <slots>1</slots>
      <tasks>3</tasks>
    </job_list>
  </job_info>
</job_info>
"""

# `qstat -xml` for a held array of 9 (-t 1-9 -h) after `qdel 122 -t 4` and releasing 2, 7 and
# 8, next to a held plain job 123; recorded, the prio/time/owner/slots lines left out.
SGE_HELD_LIST = """<?xml version='1.0'?>
<job_info>
  <queue_info>
    <job_list state="running">
      <JB_job_number>122</JB_job_number>
      <state>r</state>
      <queue_name>all.q@vm</queue_name>
      <tasks>2</tasks>
    </job_list>
    <job_list state="running">
      <JB_job_number>122</JB_job_number>
      <state>r</state>
      <queue_name>all.q@vm</queue_name>
      <tasks>7</tasks>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>122</JB_job_number>
      <state>qw</state>
      <queue_name></queue_name>
      <tasks>8</tasks>
    </job_list>
    <job_list state="pending">
      <JB_job_number>122</JB_job_number>
      <state>hqw</state>
      <queue_name></queue_name>
      <tasks>1,3,5,6,9</tasks>
    </job_list>
    <job_list state="pending">
      <JB_job_number>123</JB_job_number>
      <state>hqw</state>
      <queue_name></queue_name>
    </job_list>
  </job_info>
</job_info>
"""


def test_sge_status_is_keyed_by_element() -> None:
    jobs = Sge().parse_status(SGE_RUNNING_AND_WAITING)
    assert jobs == {"125.1": JobState("running", "r", host="vm"),
                    "125.2": JobState("running", "r", host="vm"),
                    "125.3": JobState("queued", "qw")}


def test_sge_a_list_of_waiting_elements_gives_each_its_answer() -> None:
    jobs = Sge().parse_status(SGE_HELD_LIST)
    assert {job: (s.state, s.reason) for job, s in jobs.items()} == {
        "122.2": ("running", "r"), "122.7": ("running", "r"), "122.8": ("queued", "qw"),
        **{f"122.{i}": ("queued", "hqw") for i in (1, 3, 5, 6, 9)},
        "123": ("queued", "hqw")}  # a plain job has no <tasks>: keyed by its number
    assert "122.4" not in jobs  # deleted


def test_sge_a_collapsed_pending_range_gives_each_element_its_answer() -> None:
    """As recorded for a held array of 5 before any element left the range (`-t 1-5`)."""
    xml = SGE_HELD_LIST.replace("<tasks>1,3,5,6,9</tasks>", "<tasks>1-5:1</tasks>")
    jobs = Sge().parse_status(xml)
    assert {f"122.{i}" for i in range(1, 6)} <= set(jobs)
    assert all(jobs[f"122.{i}"] == JobState("queued", "hqw") for i in (1, 3, 4, 5))


@pytest.mark.parametrize(("text", "indices"), [
    ("3", [3]), ("5-8:1", [5, 6, 7, 8]), ("1,3,5,6,9", [1, 3, 5, 6, 9]),
    ("2-10:4", [2, 6, 10]), ("0-2,7", [0, 1, 2, 7]),
])
def test_index_lists(text: str, indices: list[int]) -> None:
    assert index_list(text) == indices


@pytest.mark.parametrize("text", ["", "1-", "a", "1-3:x", "1;2"])
def test_an_index_list_it_cannot_read_is_an_error(text: str) -> None:
    with pytest.raises(ValueError):
        index_list(text)


def test_sge_unreadable_tasks_make_the_answer_no_answer() -> None:
    broken = SGE_RUNNING_AND_WAITING.replace("<tasks>3</tasks>", "<tasks>3-</tasks>")
    assert Sge().read_status(["125.1"], 0, broken, "") is None


# `qacct -j 122` after qdel of three running elements, and `qacct -j 121` after an array of 5
# of which 3 and 4 were deleted while pending; recorded, only these fields kept.
SGE_KILLED = """==============================================================
qname        all.q
hostname     vm
jobname      arrprobe
jobnumber    122
taskid       2
failed       100 : assumedly after job
exit_status  137                  (Killed)
==============================================================
qname        all.q
hostname     vm
jobname      arrprobe
jobnumber    122
taskid       7
failed       100 : assumedly after job
exit_status  137                  (Killed)
"""
SGE_COMPLETED = """==============================================================
jobnumber    121
taskid       1
failed       0
exit_status  0
==============================================================
jobnumber    121
taskid       2
failed       0
exit_status  0
==============================================================
jobnumber    121
taskid       5
failed       0
exit_status  0
"""


def test_sge_accounting_is_keyed_by_element() -> None:
    jobs = Sge().parse_outcome(SGE_COMPLETED + SGE_KILLED)
    assert {job: (s.state, s.exit_code) for job, s in jobs.items()} == {
        "121.1": ("completed", 0), "121.2": ("completed", 0), "121.5": ("completed", 0),
        "122.2": ("failed", 137), "122.7": ("failed", 137)}
    assert jobs["122.2"].reason == "100 : assumedly after job"


def test_sge_accounting_asks_about_each_array_once() -> None:
    command = Sge().outcome_command(["121.1", "121.2", "122.7", "130"])
    assert command[-3:] == ["121", "122", "130"]


def test_sge_elements_accounting_does_not_know() -> None:
    """An element that never ran (deleted while pending) has no record although its array
    has: left out, like a job qacct does not know. qacct failing says nothing of anyone."""
    asked = ["121.1", "121.3", "123", "124.1"]
    jobs = Sge().read_outcome(asked, 1, SGE_COMPLETED,
                              "error: job id 123 not found\nerror: job id 124 not found\n")
    assert set(jobs) == {"121.1", "121.2", "121.5"}
    lost = Sge().read_outcome(["121.1"], 1, "", "error: commlib error: got select error\n")
    assert lost["121.1"].state == "" and "qacct did not answer" in lost["121.1"].reason


def test_sge_cancel_commands() -> None:
    sge = Sge()
    assert sge.cancel_command(["125.2"]) == ["qdel", "125", "-t", "2"]
    assert sge.cancel_command(["125.1", "125.2", "125.3", "125.7", "126"]) == [
        "qdel", "125", "-t", "1-3", "125", "-t", "7", "126"]
    assert sge.cancel_command(["125"]) == ["qdel", "125"]  # the whole array
    assert sge.cancel_command(["125.2", "125"]) == ["qdel", "125"]
    with pytest.raises(ValueError):
        sge.cancel_command(["125.x"])


def test_sge_a_running_element_can_be_probed_on_its_host() -> None:
    running = Sge().parse_status(SGE_RUNNING_AND_WAITING)["125.1"]
    assert Sge().probe_command("125.1", running) is not None
    assert Sge().probe_command("125.3", Sge().parse_status(SGE_RUNNING_AND_WAITING)["125.3"]) \
        is None


# --------------------------------------------------------------------------------------------
# PBS


def test_pbs_array_script(tmp_path: Path) -> None:
    """`-J 0-99%5`, and no `-r n`: qsub refuses a non-rerunnable array."""
    lines = array_script(Pbs(), tmp_path)
    assert lines[1:6] == ["#PBS -N rm-0123abcd4567",
                          f"#PBS -o {FOLDER}/^array_index^/job.out",
                          f"#PBS -e {FOLDER}/^array_index^/job.err",
                          "#PBS -l walltime=00:10:00", "#PBS -J 0-99%5"]
    assert "#PBS -r n" not in lines
    body_uses(lines, "PBS_ARRAY_INDEX")
    assert "#PBS -J 0-99" in array_script(Pbs(), tmp_path, Array(100))
    assert Pbs().array_base == 0
    # a plain job keeps its -r n
    plain = Pbs().render(None, {}, "rm-1", "/w/tasks/abc", "", "python3 -m r")
    assert "#PBS -r n" in plain.splitlines()


def test_pbs_array_script_from_a_host_template() -> None:
    template = "#!/bin/sh\n{directives}\n#PBS -l place=free\ncd {workdir}\n{runner}\n"
    script = Pbs().render(template, {}, "rm-1", FOLDER, "", "run", array=Array(4, 2))
    assert "#PBS -J 0-3%2\n#PBS -l place=free" in script and "-r n" not in script


def test_pbs_element_ids_from_real_qsub_output() -> None:
    job = Pbs().job_id(pbs_data("qsub_array_nile.txt"))
    assert job == "10[].Nile-extn"
    assert [Pbs().element_id(job, i) for i in range(3)] == [
        "10[0].Nile-extn", "10[1].Nile-extn", "10[2].Nile-extn"]
    assert Pbs().element_id("10[]", 4) == "10[4]"


def test_pbs_status_asks_about_each_array_once_with_its_subjobs() -> None:
    asked = ["3[1].head", "3[2].head", "3[5].head", "7.head", "9[0].head"]
    assert Pbs().status_command(asked) == [
        "qstat", "-f", "-F", "json", "-x", "-t", "3[].head", "7.head", "9[].head"]
    assert Pbs().status_command(["3[].head"])[-2:] == ["-t", "3[].head"]
    assert "-t" not in Pbs().status_command(["7.head", "8.head"])  # plain jobs as before


def test_pbs_subjobs_synthetic() -> None:
    """SYNTHETIC (see pbs/SOURCES.md): `qstat -f -F json -x -t 3[].head` in mid-run, ids and
    the B/R/Q states from a recorded `qstat -t` listing."""
    states = Pbs().parse_status(pbs_data("synthetic_qstat_array_subjobs.json"))
    assert states["3[].head"] == JobState("running", "PBS job state B")
    assert states["3[1].head"] == JobState("running", None)
    assert states["3[2].head"] == JobState("queued", None)
    assert (states["3[3].head"].state, states["3[3].head"].exit_code) == ("completed", 0)
    assert states["3[4].head"].state == "cancelled"  # substate 91: deleted (qdel)
    # shown from the array's record: over, without a word on how (the files decide)
    assert states["3[5].head"] == JobState("failed", None)
    # in the array's array_indices_remaining, not listed on its own: still waiting
    assert states["3[6].head"] == JobState("queued", None)
    assert len(states) == 7


def test_pbs_a_collapsed_pending_range_from_qut() -> None:
    """The array fields as recorded on QUT's PBS ("array_indices_remaining": "2-1000"), in
    an entry whose id and state are SYNTHETIC: no subjob listed one by one, as a qstat that
    does not expand them answers. Each waiting index gets its answer."""
    fields = json.loads(pbs_data("qstat_qut_array_fields.json"))
    document = {"Jobs": {"4242[].qut-pbs": {"job_state": "B", **fields}}}
    states = Pbs().parse_status(json.dumps(document))
    waiting = {f"4242[{i}].qut-pbs" for i in range(2, 1001)}
    assert set(states) == waiting | {"4242[].qut-pbs"}
    assert all(states[job] == JobState("queued", None) for job in waiting)


def test_pbs_a_whole_array_waiting_says_why() -> None:
    """SYNTHETIC: the genuine queued Polaris record made an array of 3 not yet begun."""
    document = json.loads(pbs_data("qstat_polaris_queued_held_running.json"))
    queued = copy.deepcopy(document["Jobs"]["359322.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"])
    queued.update(array="True", array_indices_submitted="0-2", array_indices_remaining="0-2")
    states = Pbs().parse_status(json.dumps({"Jobs": {"77[].polaris": queued}}))
    why = "Not Running: Job is requesting an exclusive node and node is in use"
    assert {job: s for job, s in states.items() if job != "77[].polaris"} == {
        f"77[{i}].polaris": JobState("queued", why) for i in range(3)}


def test_pbs_finished_array_with_nothing_remaining() -> None:
    """"array_indices_remaining = -" as recorded at Imperial (carbon issue #121): no subjob
    is made up; here in a SYNTHETIC finished entry."""
    edtb = json.loads(pbs_data("qstat_edtb_finished.json"))["Jobs"]
    record = dict(next(iter(edtb.values())), array="True", array_indices_submitted="1-16",
                  array_indices_remaining="-")
    states = Pbs().parse_status(json.dumps({"Jobs": {"2154[].edtb": record}}))
    assert list(states) == ["2154[].edtb"] and states["2154[].edtb"].state == "completed"


def test_pbs_unknown_array_is_an_answer() -> None:
    """qstat asked about an array the server has purged: "Unknown Job Id" on stderr (the
    wording of the recorded plain-job case), so its subjobs are gone, not unasked."""
    assert Pbs().read_status(["3[1].head"], 153, "", "qstat: Unknown Job Id 3[].head\n") == {}


def test_pbs_cancel_commands() -> None:
    assert Pbs().cancel_command(["3[4].head", "3[5].head"]) == ["qdel", "3[4].head",
                                                               "3[5].head"]
    assert Pbs().cancel_command(["3[].head"]) == ["qdel", "3[].head"]  # the whole array


# --------------------------------------------------------------------------------------------
# LSF


def test_lsf_array_script(tmp_path: Path) -> None:
    lines = array_script(Lsf(), tmp_path)
    assert lines[1:4] == ['#BSUB -J "rm-0123abcd4567[1-100]%5"', f"#BSUB -o {FOLDER}/%I/job.out",
                          f"#BSUB -e {FOLDER}/%I/job.err"]
    assert "#BSUB -rn" in lines
    body_uses(lines, "LSB_JOBINDEX")
    assert '#BSUB -J "rm-0123abcd4567[1-100]"' in array_script(Lsf(), tmp_path, Array(100))
    assert Lsf().array_base == 1


def test_lsf_array_name_is_made_safe_and_fits() -> None:
    assert Lsf().array_name("my job[x]", Array(3, 2)) == "my_job_x_[1-3]%2"
    long = Lsf().array_name("n" * 600, Array(10000, 50))
    assert len(long) == 255 and long.endswith("n[1-10000]%50")
    # a plain job's name never makes an array, whatever it says
    assert Lsf().resource_lines({}, "x[1-5]", "/w/t")[0] == "-J x_1-5_"


@pytest.mark.parametrize("taskdir", ["/tmp/100%J/%I", "/tmp/a b/%I", "%I"])
def test_lsf_array_output_paths_let_only_the_index_through(taskdir: str) -> None:
    with pytest.raises(ValueError, match="output path"):
        Lsf().resource_lines({}, "job", taskdir)


def test_lsf_element_ids_from_real_bsub_output() -> None:
    job = Lsf().job_id((DATA / "lsf" / "bsub_summit.txt").read_text())
    assert [Lsf().element_id(job, Lsf().array_base + i) for i in range(2)] == [
        "1214764[1]", "1214764[2]"]


def test_lsf_status_asks_about_each_array_once_with_the_index() -> None:
    assert Lsf().status_command(["22100[1]", "22100[4]", "22005"]) == [
        "bjobs", "-json", "-o", "jobid jobindex stat exit_code exit_reason pend_reason", "-a",
        "22100", "22005"]
    assert Lsf().status_command(["22005"])[3] == "jobid stat exit_code exit_reason pend_reason"


def test_lsf_a_plain_job_has_index_0_as_recorded_by_ibm() -> None:
    """bjobs -o 'jobid jobindex ...' -json as IBM's RTM quotes it: JOBINDEX "0", JOBID bare."""
    assert Lsf().parse_status(lsf_data("bjobs_ibm_rtm_jobindex.json")) == {
        "287679": JobState("running", None)}


def test_lsf_elements_synthetic() -> None:
    """SYNTHETIC (see lsf/SOURCES.md): bjobs asked about array 22100 and plain job 22005."""
    states = Lsf().parse_status(lsf_data("synthetic_bjobs_array.json"))
    assert states == {
        "22100[1]": JobState("running", None),
        "22100[2]": JobState("completed", None, 0),
        "22100[3]": JobState("cancelled", "TERM_OWNER: job killed by owner", None),
        "22100[4]": JobState("queued", "The job array has reached its job slot limit"),
        "22100[5]": JobState("queued", "The job array has reached its job slot limit"),
        "22005": JobState("completed", None, 0),
    }


def test_lsf_element_ids_printed_whole_are_kept() -> None:
    """SYNTHETIC: with LSB_BJOBS_DISPLAY_ENH=Y the JOBID column itself is "22100[1]"."""
    document = json.loads(lsf_data("synthetic_bjobs_array.json"))
    for record in document["RECORDS"]:
        if record["JOBINDEX"] != "0":
            record["JOBID"] = f"{record['JOBID']}[{record['JOBINDEX']}]"
    assert set(Lsf().parse_status(json.dumps(document))) == {
        *(f"22100[{i}]" for i in range(1, 6)), "22005"}


def test_lsf_cancel_commands() -> None:
    assert Lsf().cancel_command(["22100[4]", "22100[5]"]) == ["bkill", "22100[4]", "22100[5]"]
    assert Lsf().cancel_command(["22100"]) == ["bkill", "22100"]  # the whole array
