"""What a status table shows with no ids: the unfinished tasks and those that finished
recently (the last RECENT_ROWS within RECENT_HOURS), so that a user sees what they just ran,
also after a kernel restart; --all shows every task, --watch only the unfinished."""

from __future__ import annotations

import time
from pathlib import Path

from remote_magic.client.core import Client
from remote_magic.client.store import RECENT_HOURS, RECENT_ROWS, TaskRecord
from remote_magic.wire.states import State


def _add(client: Client, task_id: str, state: str, finished: float | None,
         created: float) -> None:
    client.store.add(TaskRecord(id=task_id, content_hash=task_id, host="localhost",
                                created=created))
    client.store.update(task_id, state=state, finished=finished)


def test_recent_tasks_are_listed_old_ones_only_with_all(home: Path) -> None:
    client = Client()
    try:
        now = time.time()
        _add(client, "0" * 15 + "a", State.COMPLETED, now - (RECENT_HOURS + 1) * 3600,
             now - (RECENT_HOURS + 2) * 3600)
        for n in range(RECENT_ROWS + 5):  # more recent ones than are listed
            _add(client, f"{n:015x}b", State.FAILED, now - 60 + n, now - 120 + n)
        _add(client, "f" * 16, State.PREPARED, None, now)  # unfinished: always listed
        shown = [r.id for r in client.status_view([], live=False)[0]]
        assert shown[0] == "f" * 16 and len(shown) == 1 + RECENT_ROWS
        assert "0" * 15 + "a" not in shown  # finished a day ago: --all only
        assert len(client.status_view([], everything=True)[0]) == RECENT_ROWS + 7
        assert [r.id for r in client.status_view([], live=True)[0]] == ["f" * 16]
        assert [r.id for r in client.status_view(["0" * 15 + "a"])[0]] == ["0" * 15 + "a"]
    finally:
        client.close()
