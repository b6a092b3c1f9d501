"""Reading results back: what the kernel adds to a remote traceback."""

from __future__ import annotations

from pathlib import Path

from remote_magic.results import with_local_source


def test_missing_source_lines_come_from_the_local_file(tmp_path: Path) -> None:
    helpers = tmp_path / "helpers.py"
    helpers.write_text("def fit(x):\n    return 1 / x\n")
    remote = ("Traceback (most recent call last):\n"
              '  File "<remote-cell ab12>", line 1, in <module>\n'
              "    fit(0)\n"
              f'  File "{helpers}", line 2, in fit\n'
              '  File "/nowhere/gone.py", line 9, in lost\n'
              "ZeroDivisionError: division by zero\n")
    filled = with_local_source(remote)
    assert filled == remote.replace(
        'line 2, in fit\n', 'line 2, in fit\n    return 1 / x\n')


def test_lines_the_host_showed_are_kept(tmp_path: Path) -> None:
    helpers = tmp_path / "helpers.py"
    helpers.write_text("def fit(x):\n    return 2 / x\n")
    remote = f'  File "{helpers}", line 2, in fit\n    return 1 / x\n'
    assert with_local_source(remote) == remote
