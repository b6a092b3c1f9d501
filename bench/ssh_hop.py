"""Bulk transfers through a jump host (ProxyJump), against scp through the same hop.

Starts two private sshd on loopback, a bastion and the host behind it, and writes an
ssh_config where the host is reached with `ProxyJump bastion`, as many HPC sites ask. Then,
per transport, the transport's own upload and download of one file (the transfer agent's
channel, as a task's large inputs and results use it), next to `scp -J`-style copies of the
same file through the same config, with the transport's cipher. Memory is warmed before each
timed copy (see bench/ssh_task.py).

    python bench/ssh_hop.py [--mib 512] [--transport paramiko|openssh|both]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ssh_task import TRANSPORTS, warm_memory  # the same memory warming as bench/ssh_task.py

from remote_magic.client.transport.ssh import SSHTransport
from remote_magic.config.hosts import HostConfig
from remote_magic.testing.sshd import start_sshd

CIPHERS = {"paramiko": "aes128-gcm@openssh.com", "openssh": "chacha20-poly1305@openssh.com"}


def timed(size: int, fn, *args) -> float:
    """Seconds `fn(*args)` took, started right after twice `size` of memory is warmed."""
    warm_memory(2 * size)
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--transport", choices=[*TRANSPORTS, "both"], default="both")
    args = parser.parse_args()
    chosen = TRANSPORTS if args.transport == "both" else (args.transport,)
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        root = Path(tmp)
        inner = start_sshd(root / "inner")
        bastion = start_sshd(root / "bastion", alias="bastion")
        try:
            config = root / "ssh_config"
            config.write_text(bastion.ssh_config.read_text() + "\n".join([
                "Host behind", "    HostName 127.0.0.1", f"    Port {inner.port}",
                f"    User {inner.user}", f"    IdentityFile {inner.key_path}",
                "    IdentitiesOnly yes", f"    UserKnownHostsFile {inner.known_hosts}",
                "    StrictHostKeyChecking yes", "    BatchMode yes",
                "    ProxyJump bastion", ""]))
            config.chmod(0o600)
            home = root / "home"
            (home / ".ssh").mkdir(parents=True)
            (home / ".ssh" / "config").write_bytes(config.read_bytes())
            (home / ".ssh" / "config").chmod(0o600)
            os.environ["HOME"] = str(home)  # where both transports read ~/.ssh/config
            os.environ.pop("SSH_AUTH_SOCK", None)
            blob = root / "blob"
            with open(blob, "wb") as f:
                for _ in range(args.mib):
                    f.write(os.urandom(1 << 20))
            size = blob.stat().st_size
            mb = size / 1e6
            print(f"through a jump host on loopback, {os.cpu_count()} cores, Python "
                  f"{sys.version.split()[0]}, {args.mib} MiB; MB/s")
            for name in chosen:
                host = HostConfig(name="behind", address="behind", python=sys.executable,
                                  workdir=str(root / f"work-{name}"), transport=name)
                transport = SSHTransport(host, lambda event: None)
                transport.upload(blob, "warm-up")  # connect, start the agents
                up = timed(size, transport.upload, blob, "copy")
                down = timed(size, transport.download, "copy", root / "back")
                (root / "back").unlink()
                transport.close()
                scp = ["scp", "-F", str(config), "-c", CIPHERS[name]]
                scp_up = timed(size, run, [*scp, str(blob), f"behind:{root}/scp-copy"])
                scp_down = timed(size, run,
                                 [*scp, f"behind:{root}/scp-copy", str(root / "scp-back")])
                for leftover in ("scp-copy", "scp-back"):
                    (root / leftover).unlink()
                print(f"  {name:8s} up {mb / up:6.1f} (scp {mb / scp_up:6.1f}) = "
                      f"{scp_up / up:.2f}x   down {mb / down:6.1f} (scp {mb / scp_down:6.1f}) "
                      f"= {scp_down / down:.2f}x")
        finally:
            inner.stop()
            bastion.stop()


if __name__ == "__main__":
    main()
