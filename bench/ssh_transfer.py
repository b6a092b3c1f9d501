"""Bulk transfer over SSH on loopback: remote_magic's streaming channel against OpenSSH scp.

Starts a private sshd (remote_magic.testing.sshd), then in the same run moves the same bytes
with `scp` both ways and with the transport's upload/download (and a numpy array through a
whole task, up and back). Sizes past 1 GiB cross paramiko's default rekey point.

    python bench/ssh_transfer.py [--mib 1100]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from remote_magic.config import HostConfig
from remote_magic.testing.sshd import start_sshd
from remote_magic.transport.ssh import SSHTransport


def rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:7.1f} MB/s ({seconds:.2f} s)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        server = start_sshd(root / "sshd")
        try:
            source = root / "payload"
            with open(source, "wb") as f:
                for _ in range(args.mib):
                    f.write(os.urandom(1 << 20))
            size = source.stat().st_size
            print(f"{size / 2**20:.0f} MiB over loopback SSH ({os.cpu_count()} cores)")

            start = time.perf_counter()
            subprocess.run([*server.scp_args(), str(source),
                            f"{server.user}@{server.host}:{root}/scp-up"], check=True)
            scp_up = time.perf_counter() - start
            start = time.perf_counter()
            subprocess.run([*server.scp_args(), f"{server.user}@{server.host}:{root}/scp-up",
                            str(root / "scp-down")], check=True)
            scp_down = time.perf_counter() - start
            for name in ("scp-up", "scp-down"):
                (root / name).unlink()

            host = HostConfig(name="bench", address=f"{server.user}@{server.host}",
                              port=server.port, identity_file=str(server.key_path),
                              known_hosts=str(server.known_hosts), python=sys.executable,
                              workdir=str(root / "remote"))
            transport = SSHTransport(host, lambda event: None)
            transport.agent()
            transport.data_agent()
            cipher = transport.connection().transport.remote_cipher
            start = time.perf_counter()
            transport.upload(source, "payload")
            ours_up = time.perf_counter() - start
            start = time.perf_counter()
            transport.download("payload", root / "back")
            ours_down = time.perf_counter() - start
            assert (root / "back").stat().st_size == size
            transport.close()
        finally:
            server.stop()
    print(f"  scp up          {rate(size, scp_up)}")
    print(f"  scp down        {rate(size, scp_down)}")
    print(f"  remote_magic up   {rate(size, ours_up)} = {scp_up / ours_up:.2f}x scp  [{cipher}]")
    print(f"  remote_magic down {rate(size, ours_down)} = {scp_down / ours_down:.2f}x scp")


if __name__ == "__main__":
    main()
