"""Two kernels that send the identical cell to a host at the same instant: it runs once, and
both get its result (each kernel with its own task store, as two users' notebooks of one
account would be, so only the host can tell that the tasks are the same)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from helpers.hosts import ssh_host
from helpers.kernel import CLIENT, Kernel

N = 3_000_000  # float64: 24 MB, streamed in chunks rather than sent inside the stage request


def kernel(root: Path, cwd: Path, hosts: str) -> Kernel:
    root.mkdir()
    (root / "hosts.yaml").write_text(f"hosts:\n{hosts}")
    env = dict(os.environ, REMOTE_MAGIC_HOME=str(root / "data"),
               REMOTE_MAGIC_CONFIG=str(root / "hosts.yaml"), MPLBACKEND="Agg")
    started = Kernel(env, str(cwd))
    # The global generators' states travel with a task (ambient.py): seeded alike, so that
    # the two kernels' tasks are the same task.
    started.run("%load_ext remote_magic\nimport random\nimport numpy as np\n"
                f"random.seed(0)\nnp.random.seed(0)\ndata = np.arange({N}, dtype=np.float64)")
    return started


def test_two_kernels_sending_the_identical_cell_at_once_both_get_its_result(
        tmp_path: Path, sshd: Any) -> None:
    hosts = ssh_host(sshd, "hpc", tmp_path / "remote")
    kernels = [kernel(tmp_path / f"kernel{i}", tmp_path, hosts) for i in range(2)]
    ran = tmp_path / "ran.txt"
    cell = (f"%%remote -q hpc\nimport time\nopen({str(ran)!r}, 'a').write('ran ')\n"
            "time.sleep(1)\ntotal = float(data.sum())")
    try:
        for k in kernels:
            k.run("%remote_hosts --test", timeout=120)  # logged in: the cells start together
        sent = [k.start(cell) for k in kernels]
        outcomes = [k.collect(msg, timeout=180, allow_error=True) for k, msg in zip(kernels, sent)]
        assert [o.error for o in outcomes] == [None, None]
        ids = [k.value(f"{CLIENT}.store.list()[0].id")
               for k in kernels]
        assert ids[0] == ids[1]  # the same task, so the race was the host's to settle
        assert [k.value("total") for k in kernels] == [float(N * (N - 1) // 2)] * 2
        assert ran.read_text() == "ran "  # once
        assert not [p.name for p in (tmp_path / "remote" / "tasks").iterdir()
                    if p.name.startswith(".")]  # no staging copy left behind
    finally:
        for k in kernels:
            k.shutdown()
