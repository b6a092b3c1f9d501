"""Tasks over SSH on loopback, against the floors measured in the same run.

Starts a private sshd (remote_magic.testing.sshd) and measures:
  * floors: `ssh host true` (OpenSSH client, a new login each time) and a paramiko
    `exec_command('true')` on an already open connection;
  * the median time of a trivial `%%remote -q hpc --rerun` cell through a real kernel;
  * 20 trivial tasks submitted at once (RemoteExecutor), total time;
  * a 1 GiB numpy array to the host and back through a task, in MB/s, next to `scp` of the
    same bytes up and down, and the transport's raw upload/download of that file.

    python bench/ssh_task.py [-n 20] [--mib 1024]

The files go to the temporary directory ($TMPDIR): the transfers write several GiB, so on a
small VM the disk's writeback shows in the MB/s figures; TMPDIR=/dev/shm leaves it out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from jupyter_client.manager import start_new_kernel

from remote_magic import RemoteExecutor
from remote_magic.client.core import Client
from remote_magic.client.transport.connection import connect, target_for
from remote_magic.client.transport.ssh import SSHTransport
from remote_magic.config.hosts import HostConfig
from remote_magic.testing.sshd import start_sshd
from remote_magic.wire.serialization import dump_namespace


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def cell(client, code: str) -> None:
    reply = client.execute_interactive(code, timeout=120, output_hook=lambda msg: None)
    if reply["content"]["status"] != "ok":
        raise SystemExit(f"cell failed: {reply['content']}")


def identity(array):
    return array


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--mib", type=int, default=1024)
    args = parser.parse_args()
    # the host's work directory under the home directory, as on a cluster (and as the localhost
    # bench has it: on this machine /tmp, where tests churn files, creates them far slower)
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        root = Path(tmp)
        server = start_sshd(root / "sshd")
        try:
            host = HostConfig(name="hpc", address=f"{server.user}@{server.host}",
                              port=server.port, identity_file=str(server.key_path),
                              known_hosts=str(server.known_hosts), python=sys.executable,
                              workdir=str(root / "remote"))
            config = root / "hosts.yaml"
            config.write_text(
                "hosts:\n  hpc:\n" + "".join(
                    f"    {k}: {v}\n" for k, v in (
                        ("address", host.address), ("port", host.port),
                        ("identity_file", host.identity_file),
                        ("known_hosts", host.known_hosts), ("python", host.python),
                        ("workdir", host.workdir))))
            os.environ.update(REMOTE_MAGIC_CONFIG=str(config),
                              REMOTE_MAGIC_HOME=str(root / "data"))

            # floors
            ssh_true = timed(lambda: subprocess.run([*server.ssh_args(), "true"], check=True),
                             args.n)
            conn = connect(target_for(host))
            exec_true = timed(lambda: conn.run("true"), args.n)
            conn.close()

            # a trivial cell through the magic
            km, kc = start_new_kernel(kernel_name="python3", env=dict(os.environ), cwd=tmp)
            try:
                cell(kc, "%load_ext remote_magic\nx = 1")
                cell(kc, "%%remote -q hpc --rerun\ny = x + 1")  # connect, ship runtime
                per_task = timed(lambda: cell(kc, "%%remote -q hpc --rerun\ny = x + 1"),
                                 args.n)
            finally:
                kc.stop_channels()
                km.shutdown_kernel(now=True)

            # 20 at once
            client = Client()
            with RemoteExecutor("hpc", rerun=True, client=client) as pool:
                pool.submit(pow, 1, 1).result()
                start = time.perf_counter()
                futures = [pool.submit(pow, 2, i) for i in range(20)]
                [f.result() for f in futures]
                twenty = time.perf_counter() - start

                # 1 GiB array through a task
                array = np.random.default_rng(0).random(args.mib * 2**20 // 8)
                start = time.perf_counter()
                back = pool.submit(identity, array).result()
                array_time = time.perf_counter() - start
                assert back.shape == array.shape and back[-1] == array[-1]
                del back
            client.close()

            # scp and the raw channel, same bytes
            blob = root / "array.rmns"
            dump_namespace({"a": array}, blob)
            nbytes = blob.stat().st_size
            del array
            start = time.perf_counter()
            subprocess.run([*server.scp_args(), str(blob),
                            f"{server.user}@{server.host}:{root}/scp-copy"], check=True)
            scp_up = time.perf_counter() - start
            start = time.perf_counter()
            subprocess.run([*server.scp_args(), f"{server.user}@{server.host}:{root}/scp-copy",
                            str(root / "scp-back")], check=True)
            scp_down = time.perf_counter() - start
            (root / "scp-copy").unlink()
            (root / "scp-back").unlink()
            transport = SSHTransport(host, lambda event: None)
            start = time.perf_counter()
            transport.upload(blob, "raw-copy")
            raw_up = time.perf_counter() - start
            start = time.perf_counter()
            transport.download("raw-copy", root / "raw-back")
            raw_down = time.perf_counter() - start
            cipher = transport.connection().transport.remote_cipher
            transport.close()
        finally:
            server.stop()

    mb = nbytes / 1e6
    exec_ms = ms(exec_true)
    print(f"SSH on loopback, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"cipher {cipher}; medians of {args.n}; files in {Path.home()}")
    print(f"  floor: ssh host true (new login)        {ms(ssh_true):7.1f} ms")
    print(f"  floor: paramiko exec 'true' (open conn)  {exec_ms:7.1f} ms")
    print(f"  %%remote -q hpc --rerun, trivial cell    {ms(per_task):7.1f} ms  "
          f"= {ms(per_task) / exec_ms:.2f}x the exec round trip (target < 0.5x)")
    print(f"  20 trivial tasks submitted at once       {twenty * 1000:7.1f} ms total")
    both = 2 * mb
    print(f"  {nbytes / 2**30:.2f} GiB array up and back through a task: "
          f"{both / array_time:6.1f} MB/s ({array_time:.1f} s), scp up+down "
          f"{both / (scp_up + scp_down):6.1f} MB/s = "
          f"{(scp_up + scp_down) / array_time:.2f}x scp (target >= 0.5x)")
    print(f"  raw channel: up {mb / raw_up:6.1f} MB/s (scp {mb / scp_up:6.1f}), "
          f"down {mb / raw_down:6.1f} MB/s (scp {mb / scp_down:6.1f})")


if __name__ == "__main__":
    main()
