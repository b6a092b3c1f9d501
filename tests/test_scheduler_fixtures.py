"""The scheduler fixtures themselves: real SLURM and Grid Engine daemons on this machine.

The scheduler tests of the package are only as good as the clusters they run against, so each
promise of :mod:`remote_magic.testing.schedulers` and of ``scripts/slurm.sh`` / ``sge.sh`` is
checked here: a job runs and is accounted for, resource requests show in ``scontrol``, the
field parser copes with spaces, and the no-accounting mode really has no accounting. Starting
the daemons needs root; for other users the tests are skipped unless the clusters already run.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from remote_magic.testing import schedulers
from remote_magic.testing.schedulers import (
    SlurmInfo,
    SlurmJobNotFound,
    ensure_slurm,
    parse_scontrol_record,
    require_sge,
    sacct_fields,
    scripts_dir,
    slurm_job_fields,
    wait_job_state,
)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def start_slurm(accounting: bool = True) -> SlurmInfo:
    try:
        return ensure_slurm(accounting=accounting)
    except RuntimeError as exc:
        if os.geteuid() != 0:
            pytest.skip(f"SLURM is not running and only root can start it: {exc}")
        raise


@pytest.fixture(scope="module")
def slurm() -> SlurmInfo:
    return start_slurm()


def sbatch(tmp_path: Path, *args: str) -> str:
    """Submit from tmp_path (output files land there); the job id."""
    proc = run("sbatch", "--parsable", f"--chdir={tmp_path}", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def cancel(job_id: str) -> None:
    run("scancel", job_id)


# ---------------------------------------------------------------------------------- SLURM


def test_slurm_is_up(slurm: SlurmInfo) -> None:
    assert slurm.node == run("hostname", "-s").stdout.strip()
    assert slurm.cpus == os.cpu_count()
    assert slurm.memory_mb > 0
    assert slurm.partition == "debug"
    assert slurm.accounting
    status = run("bash", str(scripts_dir() / "slurm.sh"), "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"node {slurm.node}: idle" in status.stdout or "mix" in status.stdout \
        or "alloc" in status.stdout


def test_warm_start_is_fast(slurm: SlurmInfo) -> None:
    began = time.monotonic()
    ensure_slurm()
    assert time.monotonic() - began < 2


def test_sbatch_wrap_completes_and_is_accounted(slurm: SlurmInfo, tmp_path: Path) -> None:
    job = sbatch(tmp_path, "-o", "out-%j.txt", "--wrap", "echo hi")
    fields = wait_job_state(job, "COMPLETED", timeout=30)
    assert fields["ExitCode"] == "0:0"
    assert (tmp_path / f"out-{job}.txt").read_text() == "hi\n"
    assert sacct_fields(job) == {"JobID": job, "State": "COMPLETED", "ExitCode": "0:0"}
    # The plain sacct call: the allocation first, then its steps (job.batch).
    lines = run("sacct", "-j", job, "-n", "-P", "-o", "State,ExitCode").stdout.split()
    assert lines[0] == "COMPLETED|0:0"


def test_failing_job_reports_its_exit_code(slurm: SlurmInfo, tmp_path: Path) -> None:
    job = sbatch(tmp_path, "-o", "/dev/null", "--wrap", "exit 3")
    fields = wait_job_state(job, "FAILED", timeout=30)
    assert fields["ExitCode"] == "3:0"
    assert sacct_fields(job)["ExitCode"] == "3:0"


def test_resources_show_in_job_fields(slurm: SlurmInfo, tmp_path: Path) -> None:
    # Held, so it neither runs nor takes the CPUs other tests need.
    job = sbatch(tmp_path, "--hold", "--time=3", "--cpus-per-task=2", "--mem=100M",
                 "-o", "/dev/null", "--wrap", "true")
    try:
        fields = slurm_job_fields(job)
        assert fields["JobId"] == job
        assert fields["JobState"] == "PENDING"
        assert fields["Reason"] == "JobHeldUser"
        assert fields["TimeLimit"] == "00:03:00"
        assert fields["CPUs/Task"] == "2"
        assert fields["MinMemoryNode"] == "100M"
        assert fields["Partition"] == "debug"
        assert "cpu=2" in fields["TRES"] and "mem=100M" in fields["TRES"]
    finally:
        cancel(job)
    assert wait_job_state(job, "CANCELLED", timeout=30)["JobState"] == "CANCELLED"


def test_time_limits_round_up_to_minutes(slurm: SlurmInfo, tmp_path: Path) -> None:
    job = sbatch(tmp_path, "--hold", "--time=0:30", "-o", "/dev/null", "--wrap", "true")
    try:
        assert slurm_job_fields(job)["TimeLimit"] == "00:01:00"
    finally:
        cancel(job)


def test_fields_with_spaces(slurm: SlurmInfo, tmp_path: Path) -> None:
    workdir = tmp_path / "dir with spaces"
    workdir.mkdir()
    script = workdir / "my job.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    job = sbatch(workdir, "--hold", "-J", "name with B=x in it", "--comment", "see X=1 here",
                 str(script), "arg1", "arg 2")
    try:
        fields = slurm_job_fields(job)
    finally:
        cancel(job)
    assert fields["JobName"] == "name with B=x in it"
    assert fields["Command"] == f"{script} arg1 arg 2"
    assert fields["WorkDir"] == str(workdir)
    assert fields["Comment"] == "see X=1 here"
    assert fields["StdOut"] == f"{workdir}/slurm-{job}.out"
    assert fields["UserId"].startswith(run("id", "-un").stdout.strip() + "(")


def test_parse_scontrol_record_without_slurm() -> None:
    line = ("JobId=7 JobName=a b UserId=me(1) JobState=PENDING Reason=(ReqNodeNotAvail, "
            "UnavailableNodes:n1) TRES=cpu=1,mem=10M,node=1 AllocNode:Sid=h:12 "
            "Command=/x/run JobId=8 WorkDir=/w Comment=JobName=z  StdErr=/w/e Power= ")
    fields = parse_scontrol_record(line)
    assert fields == {
        "JobId": "7", "JobName": "a b", "UserId": "me(1)", "JobState": "PENDING",
        "Reason": "(ReqNodeNotAvail, UnavailableNodes:n1)", "TRES": "cpu=1,mem=10M,node=1",
        "AllocNode:Sid": "h:12", "Command": "/x/run JobId=8", "WorkDir": "/w",
        "Comment": "JobName=z", "StdErr": "/w/e", "Power": ""}
    assert parse_scontrol_record("") == {}


def test_cancelled_job_and_wait_errors(slurm: SlurmInfo, tmp_path: Path) -> None:
    job = sbatch(tmp_path, "-o", "/dev/null", "--wrap", "sleep 60")
    try:
        wait_job_state(job, ["RUNNING"], timeout=30)
        with pytest.raises(TimeoutError, match="still RUNNING"):
            wait_job_state(job, "COMPLETED", timeout=0.3)
    finally:
        cancel(job)
    fields = wait_job_state(job, "CANCELLED", timeout=30)
    # Usually the job is killed by SIGTERM (0:15); when the batch shell outlives its child by
    # a moment under load, it exits 143 itself (seen in a full run): the state says CANCELLED.
    assert fields["ExitCode"] in ("0:15", "143:0")
    # A terminal state that is not the wanted one fails at once, not after the timeout.
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="ended CANCELLED"):
        wait_job_state(job, "COMPLETED", timeout=30)
    assert time.monotonic() - began < 5
    assert sacct_fields(job)["State"].startswith("CANCELLED")
    with pytest.raises(SlurmJobNotFound):
        slurm_job_fields("999999999")


def test_missing_script_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.setattr(schedulers, "scripts_dir", lambda: tmp_path)
    with pytest.raises(RuntimeError, match="slurm.sh is missing"):
        ensure_slurm()
    with pytest.raises(RuntimeError, match="sge.sh is missing"):
        schedulers.ensure_sge(retry=True)


def test_sge_failure_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    (tmp_path / "sge.sh").write_text("echo 'sge.sh: no grid engine here' >&2; exit 1\n")
    monkeypatch.setattr(schedulers, "scripts_dir", lambda: tmp_path)
    monkeypatch.setattr(schedulers, "_sge_failure", None)  # restored afterwards
    assert schedulers.ensure_sge(retry=True) is None
    reason = schedulers.sge_unavailable_reason()
    assert reason is not None and "no grid engine here" in reason
    (tmp_path / "sge.sh").write_text("exit 0\n")
    assert schedulers.ensure_sge() is None  # the failure is remembered: no second run
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no grid engine here"):
        require_sge()
    monkeypatch.setenv("CI", "true")  # CI can run Grid Engine: not running it is a failure
    with pytest.raises(pytest.fail.Exception, match="no grid engine here"):
        require_sge()


def test_without_accounting(slurm: SlurmInfo, tmp_path: Path) -> None:
    """SLURM_ACCOUNTING=none: sacct is disabled, scontrol still knows finished jobs. (Runs
    last among the SLURM tests: switching modes restarts slurmctld; it switches back.)"""
    try:
        info = start_slurm(accounting=False)
        assert not info.accounting
        proc = run("sacct", "-n", "-X")
        assert proc.returncode != 0
        assert "accounting storage is disabled" in (proc.stderr + proc.stdout)
        job = sbatch(tmp_path, "-o", "/dev/null", "--wrap", "true")
        assert wait_job_state(job, "COMPLETED", timeout=30)["ExitCode"] == "0:0"
        with pytest.raises(RuntimeError, match="disabled"):
            sacct_fields(job)
    finally:
        info = start_slurm(accounting=True)
    assert info.accounting
    assert run("sacct", "-n", "-X", "-S", "now").returncode == 0


# ---------------------------------------------------------------------------------- Grid Engine


@pytest.fixture(scope="module")
def sge() -> schedulers.SgeInfo:
    return require_sge()


def test_sge_runs_jobs(sge: schedulers.SgeInfo, tmp_path: Path) -> None:
    assert sge.queue == "all.q"
    assert sge.slots == os.cpu_count()
    # -cwd: otherwise the job runs in the home directory; -sync y: qsub waits for the job and
    # exits with its exit code.
    common = ("qsub", "-sync", "y", "-cwd", "-b", "y", "-j", "y", "-o", str(tmp_path / "out"))
    ok = subprocess.run([*common, "-N", "t", "/bin/true"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "exited with exit code 0" in ok.stdout
    # With -b y the arguments are joined by spaces and parsed again by a shell on the host, so
    # each must be quoted: unquoted, this would run `sh -c exit 3` and exit 0.
    bad = subprocess.run([*common, "-N", "f", "sh", "-c", shlex.quote("exit 3")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert bad.returncode == 3, bad.stdout + bad.stderr
    assert "exited with exit code 3" in bad.stdout + bad.stderr  # stderr when not 0
