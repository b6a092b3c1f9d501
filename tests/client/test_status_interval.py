"""A host's status_interval: the least time between a kernel's background status requests to
its agent (a login node's etiquette), while a task's end still arrives at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers.hosts import count_status_requests

from remote_magic import RemoteExecutor
from remote_magic.client.core import Client


@pytest.mark.parametrize("interval, most", [(None, None), ("3s", 3)])
def test_background_polls_keep_the_host_s_interval(home: Path, interval: str | None,
                                                   most: int | None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with open(home / "hosts.yaml", "a") as f:
        f.write(f"  paced:\n    workdir: {home / 'paced'}\n"
                + (f"    status_interval: {interval}\n" if interval else ""))
    client = Client()
    try:
        with RemoteExecutor("paced", client=client) as pool:
            pool.submit(pow, 1, 1).result(timeout=30)
            asked = count_status_requests(monkeypatch)
            began = time.monotonic()
            assert pool.submit(time.sleep, 6).result(timeout=30) is None
            took = time.monotonic() - began
    finally:
        client.close()
    if most is None:
        assert len(asked) > 4  # left to itself the session polls every 0.1-2 s
    else:
        assert len(asked) <= took / most + 2, (asked, took)
    assert took < 8  # the end came when the task ended, not at the next poll
