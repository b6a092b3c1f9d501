"""A task that was sent a lot gets its outputs copied back while the host writes them (follow.py
on both sides). The result is the one a plain fetch gives; a follow that fails or finds no
large outputs leaves the results to the usual fetch, and no copy behind. Runs once per SSH
transport (tests/conftest.py)."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.hosts import ssh_host
from helpers.waiting import wait_for

from remote_magic.client.core import Client
from remote_magic.client.prepare import STREAM_MIN, TaskOptions, prepare_call, prepare_cell
from remote_magic.client.transport import ssh
from remote_magic.wire.states import State

FOLLOW_LOG = "remote_magic.client.transport.follow"


@pytest.fixture
def hpc(home: Path, sshd: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(sshd, "hpc", home / "remote"))
    folder = home / "notebook"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setattr(ssh, "FOLLOW_INPUTS", STREAM_MIN)  # 8 MiB sent: followed
    # a near host, as loopback is, even when a busy machine answers a request slowly
    monkeypatch.setattr(ssh.SSHTransport, "streams", lambda self: 1)
    return home / "remote"


def _big() -> np.ndarray:
    return np.arange(STREAM_MIN // 8 * 2, dtype=np.float64)  # 16 MiB, over INLINE_MAX


def _run(client: Client, prepared: Any, caplog: pytest.LogCaptureFixture) -> Any:
    record = client.submit(prepared).record
    for _ in client.follow(record):
        pass
    record = client.store.get(record.id)
    with caplog.at_level(logging.DEBUG, logger=FOLLOW_LOG):
        return record, client.result(record)


def _leftovers(record: Any) -> list[str]:
    return [p.name for p in Path(record.local_dir).iterdir() if p.name.endswith(".tmp")]


def test_large_outputs_are_copied_while_written(hpc: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    big = _big()
    client = Client()
    try:
        prepared = prepare_call(np.multiply, (big, 2.0), {}, client.host("hpc"),
                                TaskOptions())
        record = client.submit(prepared).record
        for _ in client.follow(record):
            pass
        record = client.store.get(record.id)
        assert record.state == State.COMPLETED, record.reason
        # in place before anyone asks for it, with no temporary copy left, read or not
        local = Path(record.local_dir) / "outputs.rmns"
        assert wait_for(local.exists, 10) and _leftovers(record) == []
        assert local.read_bytes() == (hpc / "tasks" / record.id / "outputs.rmns").read_bytes()
        with caplog.at_level(logging.DEBUG, logger=FOLLOW_LOG):
            result = client.result(record)
        assert np.array_equal(result.values["_rm_result"], big * 2)
        assert "the followed copy is kept" in caplog.text
    finally:
        client.close()


def test_small_outputs_of_a_large_task_come_as_usual(hpc: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    big = _big()
    client = Client()
    try:
        prepared = prepare_call(np.sum, (big,), {}, client.host("hpc"), TaskOptions())
        record, result = _run(client, prepared, caplog)
        assert result.values["_rm_result"] == big.sum()
        assert "followed copy" not in caplog.text  # inline with the end: nothing to take
        assert wait_for(lambda: _leftovers(record) == [], 5)
    finally:
        client.close()


def test_a_failed_task_with_large_inputs_reports_its_error(
        hpc: Path, caplog: pytest.LogCaptureFixture) -> None:
    big = _big()
    client = Client()
    try:
        prepared = prepare_cell("raise ValueError(f'bad {big.size}')", {"big": big},
                                client.host("hpc"), TaskOptions())
        record, result = _run(client, prepared, caplog)
        assert record.state == State.FAILED
        assert "ValueError" in repr(result.error) and f"bad {big.size}" in str(result.error)
        assert _leftovers(record) == []
    finally:
        client.close()


def test_a_follow_cut_off_leaves_the_fetch_to_bring_the_outputs(
        hpc: Path, caplog: pytest.LogCaptureFixture) -> None:
    big = _big()
    client = Client()
    try:
        prepared = prepare_cell(textwrap.dedent("""\
            import time
            time.sleep(1.5)
            doubled = big * 2
            """), {"big": big}, client.host("hpc"), TaskOptions())
        record = client.submit(prepared).record
        transport = client.session("hpc").transport
        assert wait_for(lambda: transport._spare is not None, 10)
        transport._spare.close()  # the follower's channel goes, mid-task
        for _ in client.follow(record):
            pass
        record = client.store.get(record.id)
        with caplog.at_level(logging.DEBUG, logger=FOLLOW_LOG):
            result = client.result(record)
        assert np.array_equal(result.values["doubled"], big * 2)
        assert "the followed copy is not kept" in caplog.text
        assert _leftovers(record) == []
    finally:
        client.close()
