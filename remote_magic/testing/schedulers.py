"""Real batch schedulers on this machine for tests: a one-node SLURM and a one-host Grid Engine.

A scheduler back end is only tested for real against the scheduler itself: its job states, exit
codes, time limits and accounting lag are what the code has to cope with, and no fake gets
them right. The repository's ``scripts/slurm.sh`` and ``scripts/sge.sh`` install (Debian 12
packages), configure and start the daemons, and leave them running so that later test runs
start in well under a second. This module runs those scripts and gives tests what they need
to know about the result, plus helpers to follow a SLURM job::

    from remote_magic.testing.schedulers import ensure_slurm, wait_job_state

    info = ensure_slurm()               # SlurmInfo(node='vm', cpus=2, ..., accounting=True)
    job = subprocess.run(["sbatch", "--parsable", "--wrap", "true"], capture_output=True,
                         text=True, check=True).stdout.strip()
    fields = wait_job_state(job, "COMPLETED", timeout=30)
    assert fields["ExitCode"] == "0:0"

Tests that need a scheduler to misbehave have :func:`slurm_daemon_stopped` (a controller or
database restart: commands fail while jobs go on) and :func:`slurm_node_killed` (the node dies
under running jobs: slurmd and the jobs' processes killed, slurmd started again afterwards), and
tests that count what a poll costs the scheduler have :func:`slurm_rpc_counts` (what ``sdiag``
and ``sacctmgr show stats`` count).

Starting needs root (the scripts install packages and start system daemons); once the
schedulers run, any user may call :func:`ensure_slurm` / :func:`ensure_sge`, which then only
check. :func:`ensure_slurm` raises when SLURM cannot be started, :func:`ensure_sge` returns
``None`` instead (:func:`sge_unavailable_reason` says why), for suites that treat Grid Engine as
optional; :func:`require_sge` turns that into a pytest skip.

Accounting modes: ``ensure_slurm(accounting=False)`` reconfigures the cluster without slurmdbd
(``sacct`` then fails with "Slurm accounting storage is disabled", as on clusters without a
database) and ``ensure_slurm()`` switches back. A switch restarts slurmctld and slurmd (~4 s;
queued and running jobs survive, but commands sent during the restart fail), so group the tests
of each mode. The machine has one cluster: tests running in parallel must agree on the mode.

Facts about this cluster (Debian 12, SLURM 22.05) worth knowing when writing tests:

* ``--time`` is in whole minutes and is enforced 60-90 s late; cancelled and timed-out jobs
  both show ``ExitCode=0:15``.
* A fresh slurmctld (first start, or a mode switch) schedules nothing for ~3 s; the start
  waits for its first scheduling pass, so even the first job then runs: a trivial job goes from
  ``sbatch`` to COMPLETED in 0.5-1 s (the controller works on a one-second tick).
* ``scontrol show job`` knows a finished job for 10 minutes (MinJobAge); ``sacct`` (with
  accounting) forever, but it lags ``scontrol`` by a fraction of a second: use
  :func:`sacct_fields` rather than a bare ``sacct`` right after a job ends (a job that ended
  before slurmdbd stored its start can show its final State with ExitCode 0:0 and End Unknown
  for a moment: the End field tells a final record). ``sacct -j ID``
  without ``-X`` also lists the job's steps (``ID.batch``).
* ``squeue`` lists only unfinished jobs unless given ``-t all``, which keeps a finished job
  (COMPLETED, TIMEOUT, CANCELLED...) for MinJobAge too. ``squeue -j ID`` exits 1 with
  "Invalid job id specified" for a single id it does not know; for several ids it prints the
  known ones and exits 0. With slurmctld down it fails after ~9 s of retries ("Unable to
  contact slurm controller"), while sacct (through slurmdbd) still answers.
* With slurmd killed, ``squeue`` goes on saying RUNNING for its jobs until slurmctld gives up on
  the node (SlurmdTimeout, 300 s here), while ``sstat -j ID.batch`` asks slurmd itself and
  fails after ~10 s ("unknown return given from NODE: 9001 rc = Communication connection
  failure"). A restarted slurmd still reports a job whose slurmstepd was killed (its socket is
  left in the spool directory), so SLURM never ends such a job by itself: cancel it.
* ``scontrol requeue`` refuses a job submitted with ``--no-requeue`` ("Requested operation is
  presently disabled") until an administrator sets ``Requeue=1``; a requeued job waits with
  Reason BeginTime for ~2 minutes (``scontrol update JobId=ID StartTime=now`` releases it) and
  its second start sees ``SLURM_RESTART_COUNT=1``.
* Memory is not a consumable resource (``CR_Core``) and nothing enforces ``--mem``; it is only
  recorded (``MinMemoryNode``). A request above the node's RealMemory is rejected at submission.
* Grid Engine: ``qsub -b y`` needs ``-N NAME`` unless the command is a plain word; it joins
  the command's arguments with spaces and has a shell parse the line again on the host, so
  quote each one (``qsub -b y -N x sh -c "'exit 3'"``; unquoted it runs ``sh -c exit 3``).
  A job runs in the submitter's home directory unless ``-cwd`` is given: a user without a
  home gets an error state (``Eqw``) and ``qsub -sync y`` then waits forever, so give it a
  timeout. ``qsub -sync y`` exits with the job's exit code.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SLURM_TERMINAL_STATES",
    "SgeInfo",
    "SlurmInfo",
    "SlurmJobNotFound",
    "ensure_sge",
    "ensure_slurm",
    "parse_scontrol_record",
    "require_sge",
    "sacct_fields",
    "scripts_dir",
    "sge_unavailable_reason",
    "slurm_daemon_stopped",
    "slurm_batch_processes",
    "slurm_job_fields",
    "slurm_node_killed",
    "slurm_rpc_counts",
    "wait_job_state",
]

# Job states after which a job never changes state again (by itself).
SLURM_TERMINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
})


@dataclass(frozen=True)
class SlurmInfo:
    """The running one-node SLURM cluster, as SLURM itself describes it."""

    node: str  # the node's name (this host's short name)
    cpus: int  # CPUs of the node (nproc)
    memory_mb: int  # RealMemory of the node: the most a job may ask with --mem
    partition: str  # the default partition ("debug"), without time limit
    accounting: bool  # sacct works (slurmdbd is configured and answers)


@dataclass(frozen=True)
class SgeInfo:
    """The running one-host Grid Engine cell."""

    host: str  # the execution host's name as Grid Engine knows it
    queue: str  # the cluster queue ("all.q"); qsub -q QUEUE@HOST targets this host
    slots: int  # slots of the queue on the host (nproc)
    sge_root: str  # SGE_ROOT; Debian's client wrappers set it themselves
    cell: str  # SGE_CELL


class SlurmJobNotFound(LookupError):
    """``scontrol`` does not know the job (a wrong id, or finished longer than MinJobAge ago)."""


# ---------------------------------------------------------------------------------- scripts


def scripts_dir() -> Path:
    """The repository's ``scripts`` directory, which holds ``slurm.sh`` and ``sge.sh``."""
    import remote_magic

    return Path(remote_magic.__file__).resolve().parent.parent / "scripts"


def _script(name: str) -> Path:
    path = scripts_dir() / name
    if not path.is_file():
        raise RuntimeError(
            f"{path} is missing: the scheduler fixtures run the repository's scripts/{name}, "
            "which is not part of an installed package; use a checkout of the repository "
            "(pip install -e .)")
    return path


def _run_script(name: str, args: list[str], env: dict[str, str], timeout: float) -> str | None:
    """Run ``bash scripts/NAME ARGS``; None on success, else what went wrong."""
    path = _script(name)
    try:
        proc = subprocess.run(["bash", str(path), *args], env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"{path} {' '.join(args)} did not finish in {timeout:g} s"
    if proc.returncode != 0:
        output = (proc.stderr.strip() or proc.stdout.strip())[-3000:]
        return f"{path} {' '.join(args)} failed (exit code {proc.returncode}):\n{output}"
    return None


def _command(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------------------------- SLURM


def ensure_slurm(accounting: bool = True, timeout: float = 900) -> SlurmInfo:
    """Make sure the one-node SLURM cluster runs (with or without accounting) and describe it.

    Runs ``scripts/slurm.sh start`` with ``SLURM_ACCOUNTING=slurmdbd`` or ``none``: a few
    hundredths of a second when the cluster already runs in that mode, a few seconds to switch
    modes or start the daemons, plus the package installation the first time (``timeout``
    covers it). Raises RuntimeError when the cluster cannot be started (e.g. not root and not
    running yet) or the script is missing.
    """
    env = dict(os.environ, SLURM_ACCOUNTING="slurmdbd" if accounting else "none")
    error = _run_script("slurm.sh", ["start"], env, timeout)
    if error is not None:
        raise RuntimeError(error)
    proc = _command(["scontrol", "show", "node", "-o"])
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"SLURM started but scontrol shows no node: {proc.stderr.strip()}")
    node = parse_scontrol_record(proc.stdout.splitlines()[0])
    partition = _command(["sinfo", "-h", "-o", "%P"]).stdout.split()
    default = next((p.rstrip("*") for p in partition if p.endswith("*")), "debug")
    works = _command(["sacct", "-n", "-X", "-S", "now", "-o", "JobID"]).returncode == 0
    if works != accounting:
        raise RuntimeError(f"SLURM accounting {'does not work' if accounting else 'works'} "
                           f"although it was started with accounting={accounting}")
    return SlurmInfo(node=node["NodeName"], cpus=int(node.get("CPUTot", "0")),
                     memory_mb=int(node.get("RealMemory", "0")), partition=default,
                     accounting=works)


# Keys of `scontrol show job -o` / `show node -o` (SLURM 22.05, plus a few of other versions).
# A known key ends a value that may contain spaces; other `Word=` text inside such a value is
# kept as part of it (e.g. a job named "a B=c").
_KNOWN_KEYS = frozenset("""
JobId ArrayJobId ArrayTaskId ArrayTaskThrottle HetJobId HetJobOffset HetJobIdSet JobName UserId
GroupId MCS_label Priority Nice Account QOS JobState Reason Dependency Requeue Restarts
BatchFlag Reboot ExitCode DerivedExitCode RunTime TimeLimit TimeMin SubmitTime EligibleTime
AccrueTime StartTime EndTime Deadline PreemptEligibleTime PreemptTime SuspendTime
SecsPreSuspend LastSchedEval Scheduler Partition AllocNode:Sid ReqNodeList ExcNodeList
NodeList BatchHost NumNodes NumCPUs NumTasks CPUs/Task ReqB:S:C:T TRES Socks/Node
NtasksPerN:B:S:C CoreSpec MinCPUsNode MinMemoryNode MinMemoryCPU MinTmpDiskNode Features
ClusterFeatures DelayBoot Reservation OverSubscribe Contiguous Licenses Network Command
WorkDir AdminComment SystemComment Comment StdErr StdIn StdOut Power MailUser MailType
TresPerNode TresPerTask TresPerJob TresPerSocket TresBind TresFreq CpusPerTres MemPerTres
NtasksPerTRES CPU_IDs Mem GRES Container ContainerID KillOInInvalidDependent Prolog Epilog
NodeName Arch CoresPerSocket CPUAlloc CPUEfctv CPUTot CPULoad AvailableFeatures ActiveFeatures
Gres NodeAddr NodeHostName Version OS RealMemory AllocMem FreeMem Sockets Boards State
ThreadsPerCore TmpDisk Weight Owner Partitions BootTime SlurmdStartTime LastBusyTime CfgTRES
AllocTRES CapWatts CurrentWatts AveWatts ExtSensorsJoules ExtSensorsWatts ExtSensorsTemp
""".split())
# Values that may contain spaces: file names, free text, command lines, reasons.
_FREE_TEXT_KEYS = frozenset("""
JobName Command WorkDir Comment AdminComment SystemComment StdErr StdIn StdOut Reason OS
MailUser Features ClusterFeatures AvailableFeatures ActiveFeatures Licenses Container
""".split())
_KEY = re.compile(r"(?:(?<=\s)|^)([A-Za-z][A-Za-z0-9_:/.]*)=")


def parse_scontrol_record(line: str) -> dict[str, str]:
    """``Key=Value`` pairs of one ``scontrol show ... -o`` line, values as printed.

    Values may contain ``=`` (``TRES=cpu=1,mem=100M``) and be empty (``Power=``). Where a value
    may contain spaces (JobName, Command, WorkDir, StdOut, Comment, Reason, ...), only a known
    key not seen yet ends it, so ``JobName=a B=c UserId=...`` gives ``JobName`` ``"a B=c"``.
    Trailing spaces of values are dropped.
    """
    fields: dict[str, str] = {}
    current: str | None = None
    start = 0
    for match in _KEY.finditer(line):
        key = match.group(1)
        if current is not None and current in _FREE_TEXT_KEYS and (
                key not in _KNOWN_KEYS or key in fields):
            continue  # part of the free-text value
        if current is not None:
            fields[current] = line[start:match.start()].rstrip()
        current, start = key, match.end()
    if current is not None:
        fields[current] = line[start:].rstrip()
    return fields


def slurm_job_fields(job_id: str | int) -> dict[str, str]:
    """``scontrol show job -o JOB_ID`` as a dict (``JobState``, ``ExitCode``, ``TimeLimit``...).

    For an array job it is the record whose JobId is ``job_id`` if there is one, else the first.
    Raises SlurmJobNotFound for a job scontrol does not know, RuntimeError for other failures.
    """
    proc = _command(["scontrol", "show", "job", "-o", str(job_id)])
    if proc.returncode != 0:
        message = proc.stderr.strip() or proc.stdout.strip()
        if "invalid job id" in message.lower():
            raise SlurmJobNotFound(f"SLURM does not know job {job_id}: {message}")
        raise RuntimeError(f"scontrol show job {job_id} failed: {message}")
    records = [parse_scontrol_record(line) for line in proc.stdout.splitlines() if line.strip()]
    if not records:
        raise SlurmJobNotFound(f"scontrol show job {job_id} printed nothing")
    return next((r for r in records if r.get("JobId") == str(job_id)), records[0])


def wait_job_state(job_id: str | int, states: str | Iterable[str], timeout: float = 60,
                   interval: float = 0.1) -> dict[str, str]:
    """Poll ``scontrol show job -o`` until the job's JobState is one of ``states``.

    Returns the job's fields at that moment (see :func:`slurm_job_fields`). Raises
    TimeoutError when ``timeout`` seconds pass first, and RuntimeError as soon as the job is in
    a terminal state (:data:`SLURM_TERMINAL_STATES`) that is not wanted, since it will not move
    on from there (e.g. waiting for RUNNING when the job already FAILED).
    """
    wanted = {states} if isinstance(states, str) else set(states)
    wanted = {s.upper() for s in wanted}
    deadline = time.monotonic() + timeout
    while True:
        fields = slurm_job_fields(job_id)
        state = fields.get("JobState", "")
        if state in wanted:
            return fields
        if state in SLURM_TERMINAL_STATES:
            raise RuntimeError(f"job {job_id} ended {state} (ExitCode={fields.get('ExitCode')}, "
                               f"Reason={fields.get('Reason')}), not {'/'.join(sorted(wanted))}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id} still {state} (Reason={fields.get('Reason')}) "
                               f"after {timeout:g} s, waiting for {'/'.join(sorted(wanted))}")
        time.sleep(interval)


def slurm_queue_drained(timeout: float = 60) -> None:
    """Wait until SLURM has no job left, then return; jobs still there after ``timeout``
    seconds are cancelled (and waited for). A test that needs every CPU calls this first, so
    that a job an earlier test left behind (still finishing, or never cancelled) does not keep
    its own job pending."""
    deadline = time.monotonic() + timeout
    cancelled = False
    while True:
        proc = _command(["squeue", "-h", "-o", "%i"])
        if proc.returncode == 0 and not proc.stdout.strip():
            return
        if time.monotonic() >= deadline:
            if cancelled:
                raise TimeoutError(f"SLURM jobs still queued after scancel: {proc.stdout.split()}")
            _command(["scancel", *proc.stdout.split()])
            cancelled, deadline = True, time.monotonic() + 30
        time.sleep(0.2)


def sacct_fields(job_id: str | int, fields: Iterable[str] = ("JobID", "State", "ExitCode"),
                 timeout: float = 10, finished: bool = True) -> dict[str, str]:
    """The job's own ``sacct -X`` record, once accounting has it.

    ``sacct`` lags ``scontrol``: right after a job ends it may not list the job yet, or still
    say RUNNING, and a job that ended before slurmdbd had its start record shows its final State
    with ExitCode 0:0 and End Unknown until the completion record lands. This polls until the
    record exists and, with ``finished``, until its State is no longer PENDING, RUNNING,
    REQUEUED or SUSPENDED and its End is known. States read as sacct prints them
    (``CANCELLED by 0``). Raises TimeoutError, or RuntimeError when sacct itself fails (e.g.
    accounting is disabled).
    """
    names = list(fields)
    asked = names if "End" in names else [*names, "End"]
    args = ["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", ",".join(asked)]
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        proc = _command(args)
        if proc.returncode != 0:
            raise RuntimeError(f"sacct failed: {(proc.stderr or proc.stdout).strip()}")
        for line in proc.stdout.splitlines():
            record = dict(zip(asked, line.split("|")))
            if "JobID" in record and record["JobID"] != str(job_id):
                continue
            state = record.get("State", "").split(" ")[0]
            ended = state not in {"PENDING", "RUNNING", "REQUEUED", "SUSPENDED"} \
                and record["End"] != "Unknown"
            if not finished or ended:
                return {name: record[name] for name in names}
            last = line
        if time.monotonic() >= deadline:
            raise TimeoutError(f"sacct has no finished record of job {job_id} after "
                               f"{timeout:g} s (last: {last or 'none'})")
        time.sleep(0.1)


@contextmanager
def slurm_daemon_stopped(daemon: str = "slurmctld", accounting: bool = True) -> Iterator[None]:
    """Run the body with one SLURM daemon stopped, then start it again (as root).

    With ``slurmctld`` stopped, squeue, sbatch and scancel fail after ~10 s of retries ("Unable
    to contact slurm controller") while slurmd goes on running jobs, as during a controller
    restart; with ``slurmdbd`` stopped, sacct fails. ``accounting`` is the mode to come back
    in (the one the cluster runs in). The restart takes ~6 s.
    """
    if daemon not in ("slurmctld", "slurmd", "slurmdbd"):
        raise ValueError(f"not a SLURM daemon: {daemon!r}")
    error = _run_script("slurm.sh", ["stop", daemon], dict(os.environ), 60)
    if error is not None:
        raise RuntimeError(error)
    try:
        yield
    finally:
        ensure_slurm(accounting=accounting)


def slurm_batch_processes(job_id: str | int) -> list[int]:
    """The processes of a running job's batch step on this node: its ``slurmstepd`` and every
    process under it (the job script, and what it started), parents first."""
    parents: dict[int, int] = {}
    step = None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        pid = int(entry.name)
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        if command == f"slurmstepd: [{job_id}.batch]":
            step = pid
    if step is None:
        raise RuntimeError(f"no slurmstepd for job {job_id}'s batch step on this node")
    found = [step]
    for pid in found:  # grows while it is walked: breadth first
        found.extend(sorted(child for child, parent in parents.items() if parent == pid))
    return found


@contextmanager
def slurm_node_killed(job_ids: Iterable[str | int] = (), accounting: bool = True
                      ) -> Iterator[None]:
    """Run the body as if this node had died under the given running jobs (as root): slurmd,
    then every process of each job's batch step, are killed with SIGKILL, so that nothing
    reports anything. Afterwards slurmd is started again (~1 s; the node was never marked
    down) and the jobs are cancelled if SLURM still lists them, since it would not end them
    by itself (see the module's notes); the sockets their killed steps left in slurmd's spool
    directory are removed, so that the machine is left as it was for later tests.
    """
    jobs = [str(j) for j in job_ids]
    doomed = [pid for job in jobs for pid in slurm_batch_processes(job)]
    slurmd = int(Path("/run/slurmd.pid").read_text().strip())
    for pid in [slurmd, *doomed]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        yield
    finally:
        ensure_slurm(accounting=accounting)
        if jobs:
            _command(["scancel", *jobs])
        spool = Path("/var/spool/slurmd")
        for job in jobs:
            for leftover in spool.glob(f"*_{job}.*"):
                leftover.unlink(missing_ok=True)


_RPC_LINE = re.compile(r"^\s+(\w+)\s+\(\s*\d+\)\s+count:(\d+)")


def slurm_rpc_counts() -> dict[str, int]:
    """How many requests of each type slurmctld (``sdiag``) and slurmdbd (``sacctmgr show
    stats``, when accounting runs) have served, by message type.

    The difference of two calls is what the commands run in between cost the scheduler:
    ``REQUEST_JOB_INFO`` (and ``REQUEST_JOB_INFO_SINGLE``) is one ``squeue`` or ``scontrol show
    job``, ``DBD_GET_JOBS_COND`` one ``sacct``. The counters grow until slurmctld restarts.
    """
    counts: dict[str, int] = {}
    for args in (["sdiag"], ["sacctmgr", "show", "stats"]):
        proc = _command(args)
        if proc.returncode != 0:
            continue
        by_type = proc.stdout.split("by message type", 1)[-1].split("by user", 1)[0]
        for line in by_type.splitlines():
            match = _RPC_LINE.match(line)
            if match:
                counts[match.group(1)] = counts.get(match.group(1), 0) + int(match.group(2))
    return counts


# ---------------------------------------------------------------------------------- Grid Engine

_sge_failure: str | None = None


def ensure_sge(timeout: float = 900, retry: bool = False) -> SgeInfo | None:
    """Make sure the one-host Grid Engine cell runs and describe it, or None if it cannot.

    Runs ``scripts/sge.sh start``: a fraction of a second when the cell already runs, ~3 s to
    start the daemons, plus the package installation the first time. When it fails, None is
    returned and :func:`sge_unavailable_reason` tells why; the failure is remembered, so later
    calls in the same process return None at once unless ``retry``. Raises RuntimeError only
    when the script is missing.
    """
    global _sge_failure
    if _sge_failure is not None and not retry:
        return None
    _sge_failure = _run_script("sge.sh", ["start"], dict(os.environ), timeout)
    if _sge_failure is not None:
        return None
    sge_root = os.environ.get("SGE_ROOT", "/var/lib/gridengine")
    cell = os.environ.get("SGE_CELL", "default")
    proc = _command(["qstat", "-f", "-q", "all.q"])
    # all.q@vm   BIP   0/0/2   0.01   lx-amd64   (queue, type, reserved/used/total, load, arch)
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].startswith("all.q@") and parts[2].count("/") == 2:
            return SgeInfo(host=parts[0].split("@", 1)[1], queue="all.q",
                           slots=int(parts[2].split("/")[2]), sge_root=sge_root, cell=cell)
    _sge_failure = f"Grid Engine started but qstat -f shows no all.q instance:\n{proc.stdout}"
    return None


def sge_unavailable_reason() -> str | None:
    """Why the last :func:`ensure_sge` returned None (None if it succeeded or never ran)."""
    return _sge_failure


def require_sge() -> SgeInfo:
    """:func:`ensure_sge`, or skip the calling pytest test (or fixture) with the reason.

    In CI (``CI`` set, as CI services do) it fails instead: CI runs on a machine prepared to
    run Grid Engine, where a skip would hide a broken set-up behind a green run.
    """
    info = ensure_sge()
    if info is None:
        import pytest

        message = f"Grid Engine cannot run here: {sge_unavailable_reason()}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set: the Grid Engine tests must run)")
        pytest.skip(message)
    return info
