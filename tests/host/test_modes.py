"""What records a task's life (agent logs, work directories) is private whatever the umask."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.hosts import ssh_host

from remote_magic import RemoteExecutor
from remote_magic.client.paths import data_dir


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 000 for this process, and so for the agents it starts."""
    before = os.umask(0)
    try:
        yield
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_local_agent_log_is_private_under_umask_000(home: Path, open_umask: None) -> None:
    with RemoteExecutor("localhost") as pool:
        assert pool.submit(pow, 2, 5).result(timeout=60) == 32
    logs = data_dir() / "logs"
    assert mode(logs) == 0o700 and mode(data_dir()) == 0o700
    assert [mode(log) for log in logs.iterdir()] == [0o600]
    assert mode(home / "work") == 0o700


def test_ssh_agent_log_is_private_under_a_login_umask_000(home: Path, sshd: Any) -> None:
    with open(home / "hosts.yaml", "a") as f:
        f.write(ssh_host(sshd, "open", home / "remote", setup="umask 000"))
    with RemoteExecutor("open") as pool:
        assert pool.submit(pow, 2, 5).result(timeout=60) == 32
    assert mode(home / "remote") == 0o700
    assert mode(home / "remote" / "agent.log") == 0o600
