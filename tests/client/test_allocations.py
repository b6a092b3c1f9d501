"""Allocation names on the kernel side: what is refused before anything reaches a host, the
names kept for every kernel, and the host a name stands for. Live allocations are in
tests/e2e/test_alloc.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from remote_magic.cli import main as cli
from remote_magic.client import allocations
from remote_magic.client.core import Client
from remote_magic.errors import OptionError, RemoteMagicError


@pytest.fixture
def batch_host(home: Path) -> Path:
    with open(home / "hosts.yaml", "a") as f:
        f.write(f"  hpc:\n    scheduler: slurm\n    workdir: {home / 'hpc'}\n"
                "    resources: {partition: debug}\n    max_running: 3\n")
    return home


@pytest.mark.parametrize("name, slots, host, said", [
    ("two words", None, "hpc", "cannot name an allocation"),
    ("-dash", None, "hpc", "cannot name an allocation"),
    ("x" * 64, None, "hpc", "at most 63"),
    ("gpu", 0, "hpc", "--slots 0"),
    ("gpu", None, "localhost", "has no batch scheduler"),
    ("hpc", None, "hpc", "is a host in the hosts file"),
    ("gpu", None, "nowhere", "nowhere"),
])
def test_what_cannot_be_an_allocation_is_refused_before_any_request(
        batch_host: Path, name: str, slots: int | None, host: str, said: str) -> None:
    client = Client()
    with pytest.raises((OptionError, RemoteMagicError), match=said):
        client.allocate(name, host, {}, slots)
    assert client._sessions == {}  # nothing was asked of any host
    assert allocations.known() == {}


def test_a_name_stands_for_its_host_with_the_allocations_own_settings(batch_host: Path) -> None:
    allocations.remember("gpu", {"host": "hpc", "job_id": "17", "created": 0.0})
    allocations.remember("cpu", {"host": "hpc", "job_id": "18", "created": 0.0})
    assert set(allocations.known()) == {"gpu", "cpu"}  # both kept, one write each
    host = Client().host("gpu")
    assert (host.name, host.allocation, host.scheduler) == ("gpu", "gpu", "process")
    assert host.workdir == str(batch_host / "hpc")  # the tasks live where the host's do
    assert host.max_running is None and dict(host.resources) == {}  # the worker's slots rule
    with pytest.raises(RemoteMagicError, match="is an allocation"):
        Client().allocate("other", "gpu", {})


def test_a_name_whose_host_left_the_hosts_file_is_no_host(home: Path) -> None:
    allocations.remember("gpu", {"host": "gone", "job_id": "17", "created": 0.0})
    with pytest.raises(RemoteMagicError, match="gpu"):
        Client().host("gpu")


def test_a_damaged_names_file_loses_the_names_not_the_kernel(home: Path) -> None:
    (home / "data").mkdir(exist_ok=True)
    (home / "data" / "allocations.json").write_text("{not json")
    assert allocations.known() == {}
    allocations.remember("gpu", {"host": "hpc"})
    assert allocations.known() == {"gpu": {"host": "hpc"}}


def test_the_command_line_lists_and_refuses(batch_host: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["alloc"]) == 0
    assert "No allocations" in capsys.readouterr().out
    assert cli(["alloc", "gpu"]) == 1
    assert "name the batch host with -q HOST" in capsys.readouterr().err
    assert cli(["alloc", "gpu", "-q", "localhost"]) == 1
    assert "has no batch scheduler" in capsys.readouterr().err
