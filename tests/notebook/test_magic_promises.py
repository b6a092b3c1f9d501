"""Promises of the localhost foundation checked through a real kernel: refusals are one clean
message, modules travel by name, the runner stays light, IPython's display records wherever
it is called from, and the status table has the columns the SPEC names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.kernel import Kernel

from remote_magic.notebook.views import COLUMNS


@pytest.mark.parametrize(("cell", "ename"), [
    ("%%remote -q nowhere\nx = 1", "UnknownHostError"),
    ("%%remote --walltime soon\nx = 1", "OptionError"),
    ("%%remote\nfrom os import *\nx = 1", "CaptureError"),
    ("%%remote\n!ls", "CaptureError"),
])
def test_refusals_are_one_clean_message(kernel: Kernel, cell: str, ename: str) -> None:
    """What a user sees is the message, never a traceback through the package's frames."""
    out = kernel.run(cell, allow_error=True)
    assert out.error["ename"] == ename
    assert len(out.error["traceback"]) == 1
    assert "remote_magic/" not in out.error["traceback"][0]


def test_a_broken_config_is_one_clean_message(kernel: Kernel, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("hosts:\n  hpc:\n    port: many\n")
    out = kernel.run(
        "import os\n_saved = os.environ['REMOTE_MAGIC_CONFIG']\n"
        f"os.environ['REMOTE_MAGIC_CONFIG'] = {str(bad)!r}\n"
        "try:\n    get_ipython().run_cell_magic('remote', '', 'x = 1')\n"
        "finally:\n    os.environ['REMOTE_MAGIC_CONFIG'] = _saved\n", allow_error=True)
    assert out.error["ename"] == "ConfigError"
    assert str(bad) in out.error["evalue"] and "hosts.hpc.port" in out.error["evalue"]
    assert not any("remote_magic/" in line for line in out.error["traceback"])


def test_modules_travel_by_name_and_the_runner_stays_light(kernel: Kernel) -> None:
    """A module is re-imported on the other side, not pickled; and a cell that needs neither
    IPython nor numpy does not pay for importing them (start-up time is per-task cost)."""
    kernel.run("import math as m\nimport sys as _sys")
    kernel.run("%%remote\nheavy = sorted({n.split('.')[0] for n in _sys.modules} & "
               "{'Ipy'.replace('py', 'Python'), 'numpy', 'ipykernel', 'paramiko', 'yaml', "
               "'zmq', 'matplotlib'})\nroot = m.sqrt(16)")
    assert kernel.value("heavy") == []
    assert kernel.value("root") == 4.0
    specs = sorted((Path(kernel.root) / "work" / "tasks").glob("*/spec.json"),  # type: ignore[attr-defined]
                   key=lambda p: p.stat().st_mtime)
    spec = json.loads(specs[-1].read_text())
    assert spec["imports"] == {"m": "math", "_sys": "sys"}
    assert "m" not in spec["inputs"] and "_sys" not in spec["inputs"]


def test_ipython_display_called_from_an_earlier_cells_function_is_recorded(
        kernel: Kernel) -> None:
    """The cell's own source never names IPython here: the function sent from an earlier
    cell imports it when it runs, and its display must still come back as a display."""
    kernel.run("def show(text):\n    from IPython.display import HTML, display\n"
               "    display(HTML(f'<b>{text}</b>'))")
    out = kernel.run("%%remote\nshow('hello from far away')")
    shown = [m["content"]["data"] for m in out.of_type("display_data")
             if "text/html" in m["content"]["data"]]
    assert any("<b>hello from far away</b>" in data["text/html"] for data in shown), shown
    assert "HTML object" not in out.stdout  # recorded, not printed as a repr


def test_status_table_has_the_spec_columns(kernel: Kernel) -> None:
    """Both renderings of `%remote_status`: HTML for a notebook, text for a terminal."""
    kernel.run("%%remote --name tabled\nfrom remote_magic import progress\nprogress(3, 4)\n"
               "t = 1")
    out = kernel.run("%remote_status --all")
    data = next(m["content"]["data"] for m in out.of_type("display_data", "execute_result")
                if "tabled" in m["content"]["data"].get("text/plain", ""))
    header, *rows = data["text/plain"].splitlines()
    assert header.split() == " ".join(COLUMNS).split()
    row = next(line for line in rows if "tabled" in line)
    assert "localhost" in row and "completed" in row and "3/4 (75%)" in row
    assert all(f"<th>{column}</th>" in data["text/html"] for column in COLUMNS)
