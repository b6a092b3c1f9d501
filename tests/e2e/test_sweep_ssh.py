"""Sweeps over SSH (a process host behind the sshd fixture): the inputs all elements share
go to the host once, files the cell reads go into each element's folder, and the whole
sweep costs a handful of requests, not a few per element."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.hosts import ssh_host

from remote_magic import RemoteExecutor
from remote_magic.client.agent_client import AgentClient
from remote_magic.client.core import Client
from remote_magic.client.prepare import TaskOptions
from remote_magic.client.sweeps import expand, prepare_sweep


@pytest.fixture
def hpc(home: Path, sshd: Any) -> Path:
    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(sshd, "hpc", home / "remote"))
    return home / "remote"


def count_requests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The operations every agent request names, from now on in this test."""
    asked: list[str] = []
    call = AgentClient.call

    def counting(self: AgentClient, op: str, *rest: Any, **options: Any) -> Any:
        asked.append(op)
        return call(self, op, *rest, **options)

    monkeypatch.setattr(AgentClient, "call", counting)
    return asked


def test_shared_inputs_travel_once_and_results_come_back_in_order(
        hpc: Path, home: Path, sshd: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = np.arange(2_000_000, dtype=np.float64)  # 16 MB, shared by every element
    (home / "table.csv").write_text("a,b\n1,2\n")
    monkeypatch.chdir(home)
    namespace = {"weights": weights, "scale": 3}
    code = textwrap.dedent("""\
        with open("table.csv") as f:
            rows = f.read().splitlines()
        with open("table.csv", "a") as f:  # each element changes its own copy
            f.write(f"{i},{i}\\n")
        total = float(weights[i]) * scale + len(rows)
    """)
    client = Client()
    try:
        host = client.host("hpc")
        before = sshd.accepted_logins()
        asked = count_requests(monkeypatch)
        sweep = prepare_sweep(code, namespace, host, TaskOptions(), expand({"i": range(40)}))
        records = client.submit_sweep(sweep).records
        for _ in client.follow_sweep(client.sweep(sweep.id)):
            pass
        result = client.sweep_result(client.sweep(sweep.id), originals=sweep.base.values)
        assert result.values["total"] == [i * 3.0 + 2 for i in range(40)]
        assert result.errors == {}
        assert sshd.accepted_logins() - before == 1
        blobs = list((hpc / "shared").iterdir())
        assert len(blobs) == 2  # the shared inputs and table.csv, each once
        assert max(b.stat().st_size for b in blobs) > weights.nbytes
        staged = [op for op in asked if op in ("stage", "stage_many", "put_open")]
        assert staged.count("stage") == 0 and staged.count("stage_many") == 1
        assert staged.count("put_open") <= 2  # what the host lacked: the two shared files
        # written by every element: the first one's comes back, the others' beside it
        assert (home / "table.csv").read_text() == "a,b\n1,2\n0,0\n"
        assert len(list(home.glob("table.csv.from-task-*"))) == 39
        assert any("table.csv" in note for note in result.notes)
        task = hpc / "tasks" / records[5].id
        assert (task / "shared.rmns").stat().st_nlink > 2  # a link, not a copy
        assert (task / "work" / "table.csv").read_text() == "a,b\n1,2\n5,5\n"
        # another sweep of the same cell sends nothing the host has
        (home / "table.csv").write_text("a,b\n1,2\n")
        asked.clear()
        again = prepare_sweep(code, namespace, host, TaskOptions(rerun=True),
                              expand({"i": range(3)}))
        client.submit_sweep(again)
        assert "put_open" not in asked
    finally:
        client.close()


def test_executor_map_on_a_process_host_keeps_its_usual_path(hpc: Path) -> None:
    with RemoteExecutor("hpc") as pool:
        assert list(pool.map(pow, [2, 3], [5, 2])) == [32, 9]
