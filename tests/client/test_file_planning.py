"""The file planning of remote_magic/client/files.py, on real files in a test folder: which
files a cell names are staged for a host that does not see the notebook's folder, and where
the files the task wrote land when they come back. The times are passed explicitly (file
times are set with os.utime): the planning's clock is its `prepared_at` argument.

tests/client/test_files.py has one broad example of each; these pin the rules one by one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from remote_magic.client.files import (
    Returned,
    limit_bytes,
    plan_return,
    plan_stage,
    safe_target,
)
from remote_magic.config.hosts import HostConfig

TASK = "0123456789abcdef"
PREPARED = 1_700_000_000.0  # when the task was prepared (any fixed time will do)
MB = 1 << 20


def tree(root: Path, files: dict[str, str | int]) -> Path:
    """Files under `root`: a text, or a size in bytes."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else "x" * content)
    return root


def staged(code: str, cwd: Path, values: dict[str, Any] | None = None,
           limit: int = MB) -> list[str]:
    """The task paths of the files the plan stages."""
    return [task for _, task in plan_stage(code, values or {}, cwd, limit).files]


def set_mtime(path: Path, when: float) -> None:
    os.utime(path, (when, when))


# -- limit_bytes: the host's auto_files setting -------------------------------------------------

@pytest.mark.parametrize("setting, expected", [
    ("100M", 100 * MB),  # the default
    ("1G", 1 << 30),
    ("512K", 512 << 10),
    (25, 25 * MB),  # a bare number is megabytes, as for memory
    (0, 0),  # off
])
def test_the_limit_comes_from_auto_files(setting: str | int, expected: int) -> None:
    assert limit_bytes(HostConfig("hpc", address="h", auto_files=setting)) == expected


def test_the_default_limit_is_100_megabytes() -> None:
    assert limit_bytes(HostConfig("hpc", address="h")) == 100 * MB


# -- plan_stage: which files go to the host -----------------------------------------------------

@pytest.mark.parametrize("code, expected", [
    ("read('data.csv')", ["work/data.csv"]),
    ("read(\"sub/../data.csv\")", ["work/data.csv"]),  # normalized, still inside
    ("read('./data.csv')", ["work/data.csv"]),
    ("x = 'data.csv' if flag else 'notes.txt'", ["work/data.csv", "work/notes.txt"]),
    ("def load(name='data.csv'):\n    pass", ["work/data.csv"]),  # a default, unexecuted
    ("read('nested')", ["work/nested/a.txt", "work/nested/deeper/b.txt"]),  # a folder, whole
    ("read('nested/')", ["work/nested/a.txt", "work/nested/deeper/b.txt"]),
    ("glob('nested/*.txt')", ["work/nested/a.txt"]),  # a pattern, expanded here
    ("glob('nested/*/*.txt')", ["work/nested/deeper/b.txt"]),
    ("read(f'nested/{name}.txt')", ["work/nested/a.txt", "work/nested/deeper/b.txt"]),
    ("import helpers", ["work/helpers.py"]),  # a local module
    ("from pkg.sub import f", ["work/pkg/__init__.py", "work/pkg/sub.py"]),  # its package
    ("from . import helpers", []),  # a relative import names no file
    ("read('missing.csv')", []),
    ("read('../outside.csv')", []),  # above the notebook's folder
    ("read('.')", []),  # the folder itself is never staged whole
    ("read('')", []),
    ("read('data.csv\\nnotes.txt')", []),  # not a file name
    ("read('x' * 3)", []),
    ("this is not python 'data.csv'", []),  # a cell that does not parse names nothing
])
def test_what_the_code_names(tmp_path: Path, code: str, expected: list[str]) -> None:
    cwd = tree(tmp_path / "nb", {"data.csv": "1,2", "notes.txt": "n", "helpers.py": "h = 1",
                                 "nested/a.txt": "a", "nested/deeper/b.txt": "b",
                                 "pkg/__init__.py": "", "pkg/sub.py": "def f(): pass",
                                 "unnamed.txt": "u"})
    tree(tmp_path, {"outside.csv": "secret"})
    assert staged(code, cwd) == expected


def test_an_absolute_path_counts_only_under_the_folder(tmp_path: Path) -> None:
    cwd = tree(tmp_path / "nb", {"data.csv": "1"})
    tree(tmp_path, {"elsewhere.csv": "2"})
    code = f"read({str(cwd / 'data.csv')!r}); read({str(tmp_path / 'elsewhere.csv')!r})"
    assert staged(code, cwd) == ["work/data.csv"]


def test_a_home_relative_path_counts_only_under_the_folder(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    cwd = tree(tmp_path / "nb", {"data.csv": "1"})
    tree(tmp_path, {"data.csv": "home's own"})
    monkeypatch.setenv("HOME", str(tmp_path))
    assert staged("read('~/data.csv')", cwd) == []
    assert staged("read('~/nb/data.csv')", cwd) == ["work/data.csv"]


def test_an_existing_file_with_brackets_in_its_name_is_staged(tmp_path: Path) -> None:
    cwd = tree(tmp_path / "nb", {"img[0].png": "the one named", "img0.png": "another"})
    assert staged("open('img[0].png')", cwd) == ["work/img[0].png"]


def test_a_name_longer_than_any_path_is_ignored(tmp_path: Path) -> None:
    cwd = tree(tmp_path / "nb", {"data.csv": "1"})
    assert staged(f"read({'data.csv' + '/' * 1100!r})", cwd) == []


@pytest.mark.parametrize("values, expected", [
    ({"path": "data.csv"}, ["work/data.csv"]),
    ({"path": Path("data.csv")}, ["work/data.csv"]),  # any os.PathLike
    ({"paths": ["data.csv", Path("notes.txt")]}, ["work/data.csv", "work/notes.txt"]),
    ({"pair": ("data.csv", 3)}, ["work/data.csv"]),
    ({"config": {"train": "data.csv", "epochs": 3}}, ["work/data.csv"]),  # dict values
    ({"config": {"data.csv": "train"}}, []),  # ... not its keys
    ({"nested": [["data.csv"]]}, []),  # one level down only
    ({"many": ["data.csv"] + ["x"] * 999}, []),  # a list that long is data, not file names
    ({"many": ["data.csv"] + ["x"] * 998}, ["work/data.csv"]),
    ({"n": 3, "text": "no such file"}, []),
])
def test_what_the_inputs_name(tmp_path: Path, values: dict[str, Any],
                              expected: list[str]) -> None:
    cwd = tree(tmp_path / "nb", {"data.csv": "1", "notes.txt": "2"})
    assert staged("use(values)", cwd, values) == expected


def test_an_open_npz_archive_stages_its_file(tmp_path: Path) -> None:
    """np.load of an .npz keeps the file open and reads it lazily: the task needs the file."""
    np = pytest.importorskip("numpy")
    cwd = tmp_path / "nb"
    cwd.mkdir()
    np.savez(cwd / "arrays.npz", a=np.arange(3))
    with np.load(cwd / "arrays.npz") as archive:
        assert staged("archive['a'].sum()", cwd, {"archive": archive}) == ["work/arrays.npz"]


def test_a_file_named_twice_is_staged_once(tmp_path: Path) -> None:
    cwd = tree(tmp_path / "nb", {"data/a.csv": "1", "data/b.csv": "2"})
    plan = plan_stage("read('data/a.csv'); ls('data'); glob('data/*.csv')",
                      {"p": Path("data/b.csv")}, cwd, MB)
    assert plan.files == [(cwd / "data/a.csv", "work/data/a.csv"),
                          (cwd / "data/b.csv", "work/data/b.csv")]


def test_staging_fills_up_to_the_limit_in_name_order(tmp_path: Path) -> None:
    """A file over what is left stays here; the smaller ones after it still go."""
    cwd = tree(tmp_path / "nb", {"a.bin": 60, "b.bin": 60, "c.bin": 30, "d.bin": 11})
    plan = plan_stage("read('a.bin', 'b.bin', 'c.bin', 'd.bin')", {}, cwd, 100)
    assert [task for _, task in plan.files] == ["work/a.bin", "work/c.bin"]
    assert plan.left == [("b.bin", 60), ("d.bin", 11)]


def test_a_file_exactly_at_the_limit_is_staged(tmp_path: Path) -> None:
    cwd = tree(tmp_path / "nb", {"exact.bin": 100, "one.bin": 1})
    assert staged("read('exact.bin')", cwd, limit=100) == ["work/exact.bin"]
    plan = plan_stage("read('exact.bin'); read('one.bin')", {}, cwd, 100)
    assert plan.left == [("one.bin", 1)]


def test_a_file_larger_than_the_limit_is_never_staged(tmp_path: Path) -> None:
    cwd = tree(tmp_path / "nb", {"big.bin": 101})
    plan = plan_stage("read('big.bin')", {}, cwd, 100)
    assert plan.files == [] and plan.left == [("big.bin", 101)]


def test_a_limit_of_zero_turns_staging_off(tmp_path: Path) -> None:
    cwd = tree(tmp_path / "nb", {"data.csv": "1"})
    plan = plan_stage("read('data.csv')", {"p": "data.csv"}, cwd, 0)
    assert plan.files == [] and plan.left == []  # off: nothing to say either


# -- safe_target: where a name the host sends lands here ----------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("out.csv", "out.csv"),
    ("results/2024/out.csv", "results/2024/out.csv"),  # folders made on the way back
    ("./out.csv", "out.csv"),
    ("a//b.txt", "a/b.txt"),
    ("/etc/passwd", None),
    ("../escape.txt", None),
    ("results/../../escape.txt", None),
    ("results/../out.csv", None),  # '..' anywhere is refused, even if it stays inside
    ("", None),
    (".", None),
    ("bad\0name", None),
    ("folder", None),  # an existing folder here is not replaced by a file
    ("link.txt", None),  # nor is a link written through
])
def test_where_a_returned_name_lands(tmp_path: Path, name: str, expected: str | None) -> None:
    cwd = tree(tmp_path / "nb", {"folder/kept.txt": "k", "real.txt": "r"})
    (cwd / "link.txt").symlink_to(cwd / "real.txt")
    assert safe_target(cwd, name) == (None if expected is None else cwd / expected)


def test_a_folder_linked_inside_the_notebook_folder_is_fine(tmp_path: Path) -> None:
    cwd = tmp_path / "nb"
    (cwd / "real").mkdir(parents=True)
    (cwd / "alias").symlink_to(cwd / "real")
    assert safe_target(cwd, "alias/out.csv") == cwd / "alias" / "out.csv"


def test_a_notebook_folder_reached_through_a_link(tmp_path: Path) -> None:
    """The notebook's folder itself may be a symlink (a project linked into home)."""
    (tmp_path / "projects/nb").mkdir(parents=True)
    linked = tmp_path / "nb-link"
    linked.symlink_to(tmp_path / "projects/nb")
    assert safe_target(linked, "out/r.csv") == linked / "out" / "r.csv"
    assert safe_target(linked, "../projects/nb/r.csv") is None


# -- plan_return: the files the task wrote, coming back ----------------------------------------

def returned(written: list[dict[str, Any]], cwd: Path, limit: int = MB,
             prepared_at: float = PREPARED) -> tuple[dict[str, Path], Returned]:
    copies, outcome = plan_return(written, cwd, prepared_at, limit, TASK)
    return dict(copies), outcome


def test_a_new_file_lands_in_place(tmp_path: Path) -> None:
    cwd = tmp_path / "nb"
    cwd.mkdir()
    copies, outcome = returned([{"name": "out/model.pkl", "size": 10}], cwd)
    assert copies == {"out/model.pkl": cwd / "out" / "model.pkl"}
    assert outcome.copied == ["out/model.pkl"]
    assert (outcome.beside, outcome.left, outcome.refused) == ({}, [], [])
    assert outcome.notes() == ["files written by the task, copied here: out/model.pkl"]


def test_a_file_unchanged_here_since_the_task_was_prepared_is_replaced(tmp_path: Path) -> None:
    cwd = tree(tmp_path / "nb", {"table.csv": "old"})
    set_mtime(cwd / "table.csv", PREPARED - 3600)
    copies, outcome = returned([{"name": "table.csv", "size": 3}], cwd)
    assert copies == {"table.csv": cwd / "table.csv"} and outcome.copied == ["table.csv"]


@pytest.mark.parametrize("changed, beside", [
    (PREPARED + 0.001, True),  # changed here after the task was prepared
    (PREPARED + 86400, True),
    (PREPARED, False),  # last changed at the very moment it was prepared: the task saw it
    (PREPARED - 0.001, False),
])
def test_a_file_changed_here_meanwhile_is_never_overwritten(tmp_path: Path, changed: float,
                                                            beside: bool) -> None:
    cwd = tree(tmp_path / "nb", {"table.csv": "edited here"})
    set_mtime(cwd / "table.csv", changed)
    copies, outcome = returned([{"name": "table.csv", "size": 3}], cwd)
    if beside:
        assert copies == {"table.csv": cwd / "table.csv.from-task-01234567"}
        assert outcome.beside == {"table.csv": "table.csv.from-task-01234567"}
        assert outcome.copied == []
        assert outcome.notes() == ["table.csv changed here while the task ran: kept yours; the "
                                   "task's version is table.csv.from-task-01234567"]
    else:
        assert copies == {"table.csv": cwd / "table.csv"} and outcome.beside == {}


def test_a_file_created_here_while_the_task_ran_is_kept(tmp_path: Path) -> None:
    """The task made out.csv, and so did the notebook meanwhile: both are kept."""
    cwd = tree(tmp_path / "nb", {"sub/out.csv": "made here"})
    set_mtime(cwd / "sub/out.csv", PREPARED + 5)
    copies, outcome = returned([{"name": "sub/out.csv", "size": 4}], cwd)
    assert copies == {"sub/out.csv": cwd / "sub" / "out.csv.from-task-01234567"}
    assert outcome.beside == {"sub/out.csv": "sub/out.csv.from-task-01234567"}


def test_files_come_back_up_to_the_limit_and_the_rest_are_listed(tmp_path: Path) -> None:
    cwd = tmp_path / "nb"
    cwd.mkdir()
    written = [{"name": "a.bin", "size": 60}, {"name": "b.bin", "size": 60},
               {"name": "c.bin", "size": 40}, {"name": "../evil", "size": 10},
               {"name": "huge.bin", "size": 3_500_000}]
    copies, outcome = returned(written, cwd, limit=100)
    assert list(copies) == ["a.bin", "c.bin"]  # what is refused or left takes no room
    assert outcome.left == [("b.bin", 60), ("huge.bin", 3_500_000)]
    assert outcome.refused == ["../evil"]
    assert outcome.notes() == [
        "files written by the task, copied here: a.bin, c.bin",
        "files left on the host (over the host's auto_files limit): b.bin (0.0 MB), "
        "huge.bin (3.5 MB); bring them with --collect, or raise auto_files",
        "refused file names that point outside this folder, or onto a folder or link here: "
        "../evil",
    ]


def test_with_a_limit_of_zero_every_written_file_stays_on_the_host(tmp_path: Path) -> None:
    cwd = tmp_path / "nb"
    cwd.mkdir()
    copies, outcome = returned([{"name": "out.csv", "size": 1}], cwd, limit=0)
    assert copies == {} and outcome.left == [("out.csv", 1)]


def test_names_that_would_land_outside_are_refused(tmp_path: Path) -> None:
    cwd = tmp_path / "nb"
    (cwd / "link").parent.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (cwd / "link").symlink_to(tmp_path / "outside")
    written = [{"name": name, "size": 1} for name in
               ("/tmp/x", "../x", "a/../../x", "link/x", "", "ok.txt")]
    copies, outcome = returned(written, cwd)
    assert list(copies) == ["ok.txt"]
    assert outcome.refused == ["/tmp/x", "../x", "a/../../x", "link/x", ""]
    assert not (tmp_path / "outside" / "x").exists()


def test_a_name_under_a_local_file_does_not_break_the_return(tmp_path: Path) -> None:
    cwd = tree(tmp_path / "nb", {"results": "a file here", "other.csv": "o"})
    set_mtime(cwd / "other.csv", PREPARED - 1)
    copies, outcome = returned([{"name": "results/x.csv", "size": 1},
                                {"name": "other.csv", "size": 1}], cwd)
    assert copies["other.csv"] == cwd / "other.csv"
    assert "results/x.csv" not in outcome.copied and outcome.blocked == ["results/x.csv"]
    assert "results/x.csv" not in copies
    assert any("a file here has the name of their folder" in n for n in outcome.notes())
    assert (cwd / "results").read_text() == "a file here"


def test_an_entry_without_a_size_counts_as_empty(tmp_path: Path) -> None:
    cwd = tmp_path / "nb"
    cwd.mkdir()
    copies, outcome = returned([{"name": "a.txt"}, {"name": "b.txt", "size": 1}], cwd, limit=1)
    assert list(copies) == ["a.txt", "b.txt"] and outcome.left == []


def test_nothing_written_says_nothing(tmp_path: Path) -> None:
    copies, outcome = returned([], tmp_path)
    assert copies == {} and outcome.notes() == []
