"""Nothing is lost: tasks survive kernel restarts, and two kernels share one store."""

from __future__ import annotations

import threading
from pathlib import Path

from helpers.kernel import CLIENT, start_kernel


def test_restart_keeps_tasks_listed_and_fetchable(tmp_path: Path) -> None:
    kernel = start_kernel(tmp_path)
    try:
        kernel.run("%%remote --name before\nkept = [1, 2, 3]")
        kernel.run("%%remote --nowait --name running\nimport time\ntime.sleep(2)\nlate = 'yes'")
        ids = kernel.value(f"[r.id for r in {CLIENT}"
                           ".store.list()]")
        kernel.restart()
        kernel.run("%load_ext remote_magic")
        table = kernel.run("%remote_status --all").of_type("display_data")[0]
        text = table["content"]["data"]["text/plain"]
        assert all(task_id in text for task_id in ids) and "before" in text
        assert kernel.value("'kept' in dir()") is False
        kernel.run(f"%remote_fetch {ids[1]}")
        assert kernel.value("kept") == [1, 2, 3]
        kernel.run(f"%remote_fetch {ids[0]}", timeout=30)  # still running: waits for it
        assert kernel.value("late") == "yes"
    finally:
        kernel.shutdown()


def test_two_kernels_use_the_store_at_once(tmp_path: Path) -> None:
    kernels = [start_kernel(tmp_path) for _ in range(2)]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for i in range(8):
                kernels[index].run(f"%%remote --rerun\nv = {index * 100 + i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        assert [k.value("v") for k in kernels] == [7, 107]
        count = kernels[0].value(
            f"[r.state for r in {CLIENT}.store.list()]")
        assert count == ["completed"] * 16
        check = kernels[1].value(f"__import__('sqlite3').connect({CLIENT}"
    ".store.path).execute("
                                 "'PRAGMA integrity_check').fetchone()[0]")
        assert check == "ok"
    finally:
        for k in kernels:
            k.shutdown()


def test_tasks_of_a_host_removed_from_the_hosts_file_can_still_be_listed_and_forgotten(
        tmp_path: Path) -> None:
    extra = f"  elsewhere:\n    workdir: {tmp_path / 'elsewhere'}\n"
    kernel = start_kernel(tmp_path, extra)
    try:
        kernel.run("%%remote -q elsewhere --nowait --name long\nimport time\ntime.sleep(30)")
        task = kernel.value(f"{CLIENT}.store.list()"
                            "[0].id")
        kernel.run(f"{CLIENT}.close()")
        (tmp_path / "hosts.yaml").write_text(  # the user drops the host from the file
            f"hosts:\n  localhost:\n    workdir: {tmp_path / 'work'}\n")
        table = kernel.run("%remote_status --all").of_type("display_data")[0]
        assert task in table["content"]["data"]["text/plain"]
        killed = kernel.run(f"%remote_kill {task}")
        assert "no longer in the hosts file" in killed.stdout and "%remote_purge" in killed.stdout
        purged = kernel.run(f"%remote_purge {task}")
        assert "removed here" in purged.stdout
        assert kernel.value(f"len({CLIENT}"
                            ".store.list())") == 0
    finally:
        (tmp_path / "hosts.yaml").write_text(
            f"hosts:\n  localhost:\n    workdir: {tmp_path / 'work'}\n{extra}")
        kernel.run("%remote_kill --all -q elsewhere", allow_error=True)
        kernel.shutdown()
