"""Large inputs for a host over SSH are sent from memory: no copy of them is written on this
machine, the host's copy is the only one, and it is fetched back only when a restarted kernel
needs the objects it sent. Runs once per SSH transport (tests/conftest.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.hosts import ssh_host

from remote_magic import RemoteExecutor
from remote_magic.client.core import Client
from remote_magic.client.prepare import STREAM_MIN, TaskOptions, prepare_call, prepare_cell
from remote_magic.errors import TransportError
from remote_magic.wire.serialization import load_namespace
from remote_magic.wire.states import State
from remote_magic.wire.taskdir import TaskPaths


@pytest.fixture
def hpc(home: Path, sshd: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(sshd, "hpc", home / "remote"))
    folder = home / "notebook"  # a notebook folder the host does not share
    folder.mkdir()
    monkeypatch.chdir(folder)
    return home / "remote"


def _big() -> np.ndarray:
    return np.arange(STREAM_MIN // 8 * 2, dtype=np.float64)  # 16 MiB


def test_large_inputs_travel_from_memory_and_come_back_after_a_restart(
        hpc: Path, home: Path) -> None:
    big, small = _big(), [1, 2, 3]
    client = Client()
    try:
        prepared = prepare_cell(textwrap.dedent("""\
            kept = {'big': big, 'small': small}
            total = float(big.sum())
            """), {"big": big, "small": small}, client.host("hpc"), TaskOptions())
        assert list(prepared.streams) == ["inputs.rmns"] and prepared.files == ["spec.json"]
        record = client.submit(prepared).record
        assert not prepared.streams  # released once staged
        for _ in client.follow(record):
            pass
        record = client.store.get(record.id)
        assert record.state == State.COMPLETED, record.reason
        local = TaskPaths(record.local_dir)
        assert not local.inputs.exists()  # never written here
        remote = TaskPaths(hpc / "tasks" / record.id)
        assert np.array_equal(load_namespace(remote.inputs)["big"], big)

        with_originals = client.result(record, originals=prepared.values)
        assert with_originals.values["kept"]["big"] is big and not local.inputs.exists()
    finally:
        client.close()
    restarted = Client()  # no objects at hand: the host's copy of the inputs is fetched
    try:
        result = restarted.result(restarted.store.get(record.id))
        assert np.array_equal(result.values["kept"]["big"], big)
        assert result.values["kept"]["small"] == small and result.values["total"] == big.sum()
        assert local.inputs.is_file()
    finally:
        restarted.close()


def test_small_inputs_are_still_written_and_travel_in_the_request(hpc: Path) -> None:
    client = Client()
    try:
        prepared = prepare_call(sum, ([1, 2, 3],), {}, client.host("hpc"), TaskOptions())
        assert prepared.streams == {} and "inputs.rmns" in prepared.files
        prepared.discard()
    finally:
        client.close()


def test_executor_sends_a_large_argument_once_and_right(hpc: Path) -> None:
    big = _big()
    with RemoteExecutor("hpc") as pool:
        assert pool.submit(np.sum, big).result(timeout=60) == big.sum()


def test_an_input_changed_before_it_was_sent_is_refused(hpc: Path) -> None:
    """The digest taken while sending must be the one the task's id was made from: an
    argument changed after it was prepared fails the staging, and nothing runs."""
    big = _big()
    client = Client()
    try:
        prepared = prepare_call(np.sum, (big,), {}, client.host("hpc"), TaskOptions())
        big[0] = -1.0  # after prepare, before staging
        record = client.accept(prepared).record
        with pytest.raises(TransportError, match="changed while they were sent"):
            client.start(record, prepared)
        assert client.store.get(record.id).state == State.FAILED
        assert not (hpc / "tasks" / record.id).exists()
    finally:
        client.close()
