"""Bad input through a real kernel: each mistake is one short message, before anything runs.

The cases are those a demanding user (and an attacker) tried: unbalanced quotes, task ids that
are not ids, file names with blanks, tabs, newlines or 254 characters, collect patterns the
host would read otherwise, resources a scheduler would refuse or misread, a hosts file built to
hang the loader, and a --nowait task purged by another kernel. Every test checks the same rule:
the notebook shows one paragraph that says what to do (no traceback through remote_magic), and
nothing was staged, recorded or left half-written.
"""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.hosts import ssh_host
from helpers.kernel import Kernel, start_kernel
from helpers.waiting import wait_for

from remote_magic.client.store import TaskStore


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, sshd: Any,
        ssh_transport: str) -> Iterator[Kernel]:
    """A kernel working in `root/project`, with a host over SSH that does not see that folder
    (so files travel), and two batch hosts that must refuse before anything is sent."""
    root = tmp_path_factory.mktemp("bad-input")
    hosts = (ssh_host(sshd, "hpc", root / "remote")
             + f"  batch:\n    scheduler: slurm\n    workdir: {root / 'batch'}\n"
             + f"  lsfhost:\n    scheduler: lsf\n    workdir: {root / 'lsf'}\n")
    kernel = start_kernel(root, hosts)
    (root / "project").mkdir()
    kernel.run(f"import os, shlex\nos.chdir({str(root / 'project')!r})")
    kernel.root = root  # type: ignore[attr-defined]
    yield kernel
    kernel.shutdown()


def refused(kernel: Kernel, code: str, kind: str) -> str:
    """Run a cell that must fail with `kind`, shown as one paragraph without our frames."""
    out = kernel.run(code, allow_error=True)
    assert out.error is not None, f"not refused: {code[:80]!r}"
    assert out.error["ename"] == kind, "\n".join(out.error["traceback"])
    shown = "\n".join(out.error["traceback"])
    assert len(out.error["traceback"]) == 1 and "Traceback" not in shown, shown
    assert "remote_magic/" not in shown and "\n\n" not in shown, shown
    assert len(shown) < 600, shown
    return out.error["evalue"]


def tasks_recorded(kernel: Kernel) -> list[str]:
    store = kernel.root / "data" / "tasks.sqlite"  # type: ignore[attr-defined]
    return [r.id for r in TaskStore(store).list()] if store.exists() else []


def leftovers(kernel: Kernel) -> list[str]:
    """Task directories and temporary files of tasks that never started."""
    root: Path = kernel.root  # type: ignore[attr-defined]
    found = [p.name for p in (root / "data" / "tasks").glob(".prepare-*")]
    for workdir in ("batch", "lsf"):
        if (root / workdir / "tasks").exists():
            found += [f"{workdir}/{p.name}" for p in (root / workdir / "tasks").iterdir()]
    return found


def test_an_unclosed_quote_in_any_magic_line_is_one_clean_message(bad: Kernel) -> None:
    before = tasks_recorded(bad)
    for line in ["%%remote --name 'x\nx = 1", '%%remote --files "data.csv\nx = 1',
                 '%remote_fetch "abc', "%remote_log 'abc", "%remote_status '",
                 '%remote_kill "', "%remote_hosts 'test"]:
        message = refused(bad, line, "OptionError")
        assert "is never closed" in message and "column" in message, message
    message = refused(bad, "%remote_purge abc\\", "OptionError")
    assert "ends with a backslash" in message
    assert tasks_recorded(bad) == before and not leftovers(bad)


def test_a_mistyped_option_is_one_clean_message(bad: Kernel) -> None:
    for line, said in [("%%remote --cores many\nx = 1", "invalid int value"),
                       ("%%remote --bogus\nx = 1", "%%remote? lists the options"),
                       ("%%remote --files\nx = 1", "--option=value"),
                       ("%%remote -o 'a b'\nx = 1", "not a Python variable name"),
                       ("%%remote --name {shlex.quote('a' + chr(10) + 'b')}\nx = 1", "one line"),
                       ("%remote_status --watch=yes", "ignored explicit argument")]:
        message = refused(bad, line, "OptionError")
        assert said in message, message


def test_a_task_id_that_cannot_be_one_is_refused_without_asking_the_store(bad: Kernel) -> None:
    for line in ['%remote_fetch "\' OR 1=1 --"', "%remote_log ../../etc/passwd",
                 '%remote_purge "a;b"', "%remote_kill {'f' * 100_000}", "%remote_status ''"]:
        message = refused(bad, line, "TaskNotFoundError")
        assert "is not a task id" in message and len(message) < 250, message


def test_quotes_group_words_as_in_a_shell_for_names_labels_files_and_patterns(
        bad: Kernel) -> None:
    """The README's `--collect "out/*.csv"` collected nothing (the quotes stayed in the
    pattern), and a file name with a blank, a tab or a newline could not be given at all."""
    project: Path = bad.root / "project"  # type: ignore[attr-defined]
    names = ["a b.txt", "a c.txt", "tab\there.txt", "new\nline.txt"]
    for number, name in enumerate(names):
        (project / name).write_text(f"file {number}")
    bad.run(f"names = {names!r}\ntab, newline = names[2], names[3]")
    line = ('%%remote -q hpc --name "my fit" --files "a b.txt" a\\ c.txt {shlex.quote(tab)} '
            '{shlex.quote(newline)} --collect "out/*.csv"')
    out = bad.run(line + textwrap.dedent("""
        contents = [open(n).read() for n in names]
        os.makedirs("out", exist_ok=True)
        open("out/r.csv", "w").write("1,2")"""))
    assert bad.value("contents") == [f"file {n}" for n in range(4)]
    assert (project / "out" / "r.csv").read_text() == "1,2"
    assert "collected into" in out.stdout
    root: Path = bad.root  # type: ignore[attr-defined]
    assert "my fit" in [r.name for r in TaskStore(root / "data" / "tasks.sqlite").list()]


def test_collect_patterns_that_cannot_work_are_refused_before_the_task_runs(
        bad: Kernel) -> None:
    """`out**` raised only once the task had run, and left its results unloadable."""
    root: Path = bad.root  # type: ignore[attr-defined]
    before = tasks_recorded(bad)
    remote_before = sorted((root / "remote" / "tasks").glob("*"))
    for pattern, said in [("out**", "whole part of the path"), ("a/***/b", "whole part"),
                          ("/etc/*", "relative"), ("~/x", "relative"), ("../x", "'..'"),
                          ("out/../../x", "'..'"), ("''", "empty"), ("./", "names no file")]:
        message = refused(bad, f"%%remote -q hpc --collect {pattern}\nx = 1", "OptionError")
        assert message.startswith("--collect ") and said in message, message
    assert tasks_recorded(bad) == before
    assert sorted((root / "remote" / "tasks").glob("*")) == remote_before


def test_files_that_cannot_be_sent_are_refused_before_anything_is_staged(bad: Kernel) -> None:
    project: Path = bad.root / "project"  # type: ignore[attr-defined]
    os.mkfifo(project / "pipe")
    (project.parent / "outside.txt").write_text("not the notebook's")
    before = tasks_recorded(bad)
    for spec, said in [("z" * 300, "no file can have a name that long"),
                       ("missing.txt", "no such file or folder"),
                       ("''", "empty name"), ("pipe", "not a regular file or folder"),
                       ("../outside.txt", "outside the notebook's folder"),
                       ("/etc/hostname", "'paths:' mapping")]:
        message = refused(bad, f"%%remote -q hpc --files {spec}\nx = 1", "OptionError")
        assert said in message, message
    assert tasks_recorded(bad) == before and not leftovers(bad)


def test_a_file_with_a_254_character_name_is_staged_and_comes_back(bad: Kernel) -> None:
    """Its temporary name during the transfer (ENAMETOOLONG) made the task fail to stage."""
    project: Path = bad.root / "project"  # type: ignore[attr-defined]
    name = "n" * 250 + ".txt"
    (project / name).write_text("long")
    bad.run(f"long_name = {name!r}")
    bad.run(textwrap.dedent(f"""\
        %%remote -q hpc --files {name} --collect back/*
        os.makedirs("back", exist_ok=True)
        content = open(long_name).read()
        open("back/" + long_name, "w").write(content + " and back")"""))
    assert bad.value("content") == "long"
    assert (project / "back" / name).read_text() == "long and back"


@pytest.mark.parametrize("options,said", [
    ("-q batch --mem 0", "more than zero"),
    ("-q batch --walltime 0", "longer than zero"),
    ("-q batch --walltime 0:00:00", "longer than zero"),
    ("-q batch --walltime 1:99", "seconds must be below 60"),
    ("-q batch --walltime 1-25:00:00", "hours after the days must be below 24"),
    ("-q batch --walltime 99999999999", "longer than 365 days"),
    ("-q batch --cores 0", "from 1 to"),
    ("-q lsfhost --walltime 1:00:30", "(lsf) cannot take these resources"),
])
def test_resources_a_scheduler_would_refuse_or_misread_are_refused_before_staging(
        bad: Kernel, options: str, said: str) -> None:
    before = tasks_recorded(bad)
    message = refused(bad, f"%%remote {options}\nx = 1", "OptionError")
    assert said in message, message
    assert tasks_recorded(bad) == before and not leftovers(bad)


def test_an_alias_bomb_in_the_hosts_file_reaches_the_notebook_as_one_line(bad: Kernel) -> None:
    root: Path = bad.root  # type: ignore[attr-defined]
    hosts = root / "hosts.yaml"
    saved = hosts.read_text()
    lists = ["&a0 [" + ", ".join(["x"] * 9) + "]"] + [
        f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    hosts.write_text(saved + f"default: [{', '.join(lists)}]\n")
    try:
        started = time.monotonic()
        message = refused(bad, "%%remote\nx = 1", "ConfigError")
        assert time.monotonic() - started < 5
        assert "more than 100,000 values" in message
    finally:
        hosts.write_text(saved)


def test_a_nowait_task_purged_by_another_kernel_is_reported_once_then_forgotten(
        bad: Kernel) -> None:
    """Every later cell printed "Error in callback ... load_finished" with a traceback."""
    root: Path = bad.root  # type: ignore[attr-defined]
    out = bad.run("%%remote --nowait\nimport time\ntime.sleep(0.3)\npurged = 1")
    task = out.stdout.split("Task ", 1)[1].split()[0]
    store = TaskStore(root / "data" / "tasks.sqlite")
    assert wait_for(lambda: store.get(task).final, 30)
    other = Kernel(bad.env, bad.cwd)
    try:
        other.run("%load_ext remote_magic")
        assert "removed" in other.run(f"%remote_purge {task}").stdout
    finally:
        other.shutdown()
    first, second = bad.run("1 + 1"), bad.run("2 + 2")
    for cell in (first, second):
        assert "Error in callback" not in cell.stdout + cell.stderr
        assert cell.error is None
    assert f"task {task} was purged elsewhere" in first.stderr
    assert first.stderr.count("\n") == 1 and second.stderr == ""
    assert bad.value("'purged' in dir()") is False
    assert bad.run("%%remote\nafter = 3").ok and bad.value("after") == 3
