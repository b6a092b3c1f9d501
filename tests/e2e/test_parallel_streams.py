"""Large transfers to a distant host go in parallel streams (client/transport/streams.py): over
a relay that delays every byte (remote_magic.testing.latency: a 20 ms round trip), files and a
task's inputs and outputs arrive whole, in their place, with nothing left behind on either
side. Runs once per SSH transport (tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.hosts import ssh_host

from remote_magic.client.core import Client
from remote_magic.client.prepare import TaskOptions, prepare_call
from remote_magic.client.transport.streams import PARALLEL_MIN
from remote_magic.errors import TransportError
from remote_magic.testing.latency import Relay, start_relay
from remote_magic.wire.states import State


def _relay(home: Path, server: Any, name: str) -> tuple[Relay, dict[str, str]]:
    """`server` behind a relay, 10 ms away each way, and what a host entry then says."""
    relay = start_relay((server.host, server.port), 0.01)
    known = home / f"known_hosts_{name}"
    known.write_text(relay.known_hosts_line(server.known_hosts_line("ssh-ed25519")))
    return relay, {"port": str(relay.port), "known_hosts": str(known)}


@pytest.fixture
def far(home: Path, sshd: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Host "far": the sshd fixture, 10 ms away each way."""
    relay, reach = _relay(home, sshd, "far")
    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(sshd, "far", home / "remote", **reach))
    folder = home / "notebook"
    folder.mkdir()
    monkeypatch.chdir(folder)
    yield home / "remote"
    relay.stop()


def _temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*") if p.name.endswith((".part", ".tmp"))]


def test_a_large_file_goes_and_comes_back_in_parallel_streams(far: Path, home: Path) -> None:
    client = Client()
    try:
        transport = client.session("far").transport
        assert transport.streams() > 1  # the link's round trip calls for them
        data = os.urandom(PARALLEL_MIN + 3_000_000)  # ranges of unequal length
        local = home / "blob"
        local.write_bytes(data)
        assert transport.upload(local, "copies/blob") == len(data)
        assert (far / "copies" / "blob").read_bytes() == data
        back = home / "back" / "blob"
        assert transport.download("copies/blob", back, len(data)) == len(data)
        assert back.read_bytes() == data
        assert _temporaries(far) == [] and _temporaries(home / "back") == []
        assert len(transport._data) > 1  # it did use several transfer agents
    finally:
        client.close()


def test_a_task_with_large_inputs_and_outputs_runs_far_away(far: Path) -> None:
    big = np.arange(PARALLEL_MIN // 8 * 2, dtype=np.float64)  # 64 MiB in, 64 MiB out
    client = Client()
    try:
        prepared = prepare_call(np.multiply, (big, 3.0), {}, client.host("far"), TaskOptions())
        record = client.submit(prepared).record
        for _ in client.follow(record):
            pass
        record = client.store.get(record.id)
        assert record.state == State.COMPLETED, record.reason
        assert np.array_equal(client.result(record).values["_rm_result"], big * 3)
        assert _temporaries(far) == [] and _temporaries(Path(record.local_dir)) == []
    finally:
        client.close()


def test_inputs_changed_while_sent_in_streams_are_refused(far: Path) -> None:
    big = np.arange(PARALLEL_MIN // 8 * 2, dtype=np.float64)
    client = Client()
    try:
        prepared = prepare_call(np.sum, (big,), {}, client.host("far"), TaskOptions())
        big[-1] = -1.0  # after prepare, before staging
        record = client.accept(prepared).record
        with pytest.raises(TransportError, match="changed while they were sent"):
            client.start(record, prepared)
        assert client.store.get(record.id).state == State.FAILED
        assert not (far / "tasks" / record.id).exists()
    finally:
        client.close()


def test_a_file_changed_on_the_host_is_not_taken_half(far: Path, home: Path) -> None:
    client = Client()
    try:
        transport = client.session("far").transport
        (far / "copies").mkdir(parents=True)
        (far / "copies" / "blob").write_bytes(os.urandom(PARALLEL_MIN))
        with pytest.raises(TransportError, match="received"):  # it was said to be larger
            transport.download("copies/blob", home / "blob", PARALLEL_MIN + 8_000_000)
        assert not (home / "blob").exists() and _temporaries(home) == []
    finally:
        client.close()


def test_a_host_that_allows_few_sessions_gets_fewer_streams(
        home: Path, tmp_path: Path) -> None:
    """sshd's MaxSessions caps the channels of one connection: the streams the host refused
    are left out, and the transfer goes over those it took. (OpenSSH's ssh, refused a session
    on the master, opens a connection of its own: with a key, and no prompt (BatchMode), it
    logs in, and the stream is kept.)"""
    from remote_magic.testing.sshd import start_sshd

    server = start_sshd(tmp_path / "sshd", max_sessions=3)
    relay, reach = _relay(home, server, "few")
    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(server, "few", home / "remote", **reach))
    client = Client()
    try:
        transport = client.session("few").transport
        wanted = transport.streams()
        data = os.urandom(PARALLEL_MIN + 5_000_000)
        (home / "blob").write_bytes(data)
        assert transport.upload(home / "blob", "copies/blob") == len(data)
        assert (home / "remote" / "copies" / "blob").read_bytes() == data
        if transport.openssh:
            assert transport.streams() < wanted or server.accepted_logins() > 1
        else:
            assert 1 < transport.streams() < wanted  # the agent, stream 0 and some more
        assert transport.download("copies/blob", home / "back", len(data)) == len(data)
        assert (home / "back").read_bytes() == data
    finally:
        client.close()
        relay.stop()
        server.stop()
