"""Which files a cell uses travel to a host that does not see the notebook's folder, and how
the files it writes come back."""

from __future__ import annotations

import os
import time
from pathlib import Path

from remote_magic.client.files import plan_return, plan_stage, safe_target, shared_folder
from remote_magic.config.hosts import HostConfig


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_host_sees_the_folder_here_or_through_its_paths_mapping(tmp_path: Path) -> None:
    assert shared_folder(HostConfig("localhost"), tmp_path) == str(tmp_path)
    mapped = HostConfig("hpc", address="h", paths={str(tmp_path.parent): "/scratch/me"})
    assert shared_folder(mapped, tmp_path) == f"/scratch/me/{tmp_path.name}"
    assert shared_folder(HostConfig("hpc", address="h"), tmp_path) is None


def test_files_the_cell_names_are_staged(tmp_path: Path) -> None:
    tree(tmp_path, {"data.csv": "a", "data/x.txt": "bb", "helpers.py": "c", "other.txt": "d",
                    "csvs/1.csv": "e", "csvs/2.csv": "f", "inputs.txt": "g"})
    code = ("import helpers\nimport pandas\ndf = read('data.csv')\nls('data')\n"
            "glob('csvs/*.csv')\nopen('missing.txt')\nopen('../escape')\nopen('.')")
    plan = plan_stage(code, {"path": "inputs.txt", "paths": ["other.txt"], "n": 3}, tmp_path,
                      1 << 20)
    assert sorted(d for _, d in plan.files) == [
        "work/csvs/1.csv", "work/csvs/2.csv", "work/data.csv", "work/data/x.txt",
        "work/helpers.py", "work/inputs.txt", "work/other.txt"]
    assert plan.left == []


def test_staging_stops_at_the_limit_and_says_what_was_left(tmp_path: Path) -> None:
    tree(tmp_path, {"small.txt": "x" * 10, "big.txt": "y" * 1000})
    plan = plan_stage("open('small.txt'); open('big.txt')", {}, tmp_path, 100)
    assert [d for _, d in plan.files] == ["work/small.txt"]
    assert plan.left == [("big.txt", 1000)]
    assert plan_stage("open('small.txt')", {}, tmp_path, 0).files == []  # 0: off


def test_written_files_come_back_unless_changed_here_meanwhile(tmp_path: Path) -> None:
    tree(tmp_path, {"old.csv": "before", "edited.csv": "before"})
    past = time.time() - 60
    os.utime(tmp_path / "old.csv", (past, past))
    prepared_at = time.time() - 30
    written = [{"name": "old.csv", "size": 3}, {"name": "edited.csv", "size": 3},
               {"name": "new/dir/out.csv", "size": 3}, {"name": "../evil", "size": 1},
               {"name": "/etc/passwd", "size": 1}, {"name": "huge.bin", "size": 10**9}]
    copies, returned = plan_return(written, tmp_path, prepared_at, 10**6, "abcdef0123456789")
    assert dict(copies) == {"old.csv": tmp_path / "old.csv",
                            "edited.csv": tmp_path / "edited.csv.from-task-abcdef01",
                            "new/dir/out.csv": tmp_path / "new" / "dir" / "out.csv"}
    assert returned.copied == ["old.csv", "new/dir/out.csv"]
    assert returned.beside == {"edited.csv": "edited.csv.from-task-abcdef01"}
    assert returned.refused == ["../evil", "/etc/passwd"]
    assert returned.left == [("huge.bin", 10**9)]
    notes = " ".join(returned.notes())
    assert "kept yours" in notes and "--collect" in notes and "outside this folder" in notes


def test_a_name_cannot_escape_through_a_symlinked_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    inside = tmp_path / "nb"
    inside.mkdir()
    (inside / "link").symlink_to(outside)
    assert safe_target(inside, "link/file.txt") is None
    assert safe_target(inside, "ok/file.txt") == inside / "ok" / "file.txt"
