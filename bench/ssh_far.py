"""Bulk transfers to a distant host: parallel streams against scp, over a delaying relay.

A private sshd on loopback, reached through remote_magic.testing.latency's relay, which holds
every byte for `--delay` ms each way (this machine's kernel has no netem): a round trip of
twice that, as to a cluster across a country. Over such a link one SSH channel moves at most
its peer's window per round trip, scp included. For each transport, with scp's cipher as in
ssh_task.py:
  * scp of the file up, then down;
  * the transport's raw upload and download of the same file (on an open connection whose
    transfer agents have started: a first transfer starts them), with how many streams the
    link's round trip called for;
  * a numpy array of the same size up and back through a task, against scp up+down.

    python bench/ssh_far.py [--mib 512] [--delay 10] [--transport paramiko|openssh|both]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from ssh_task import TRANSPORTS, identity, raw_channel, settings, warm_memory  # noqa: E402

from remote_magic import RemoteExecutor  # noqa: E402
from remote_magic.client.core import Client  # noqa: E402
from remote_magic.config.hosts import HostConfig  # noqa: E402
from remote_magic.testing.latency import start_relay  # noqa: E402
from remote_magic.testing.sshd import start_sshd  # noqa: E402
from remote_magic.wire.serialization import dump_namespace  # noqa: E402

CIPHERS = {"paramiko": "aes128-gcm@openssh.com", "openssh": "chacha20-poly1305@openssh.com"}


def scp(server, port: int, known: Path, blob: Path, root: Path, cipher: str) -> tuple[float, float]:
    args = ["scp", "-F", "/dev/null", "-P", str(port), "-i", str(server.key_path),
            "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-c", cipher]
    remote = f"{server.user}@{server.host}:{root}/scp-copy"
    warm_memory(2 * blob.stat().st_size)
    start = time.perf_counter()
    subprocess.run([*args, str(blob), remote], check=True)
    up = time.perf_counter() - start
    warm_memory(2 * blob.stat().st_size)
    start = time.perf_counter()
    subprocess.run([*args, remote, str(root / "scp-back")], check=True)
    down = time.perf_counter() - start
    (root / "scp-copy").unlink()
    (root / "scp-back").unlink()
    return up, down


def ours(host: HostConfig, blob: Path, root: Path, mib: int) -> dict[str, float]:
    up, down, _ = raw_channel(host, blob, root / "raw-back")
    name = host.name
    client = Client()
    transport = client.session(name).transport
    transport.upload(blob, "raw-first")  # starts this client's transfer agents
    array = np.random.default_rng(0).random(mib * 2**20 // 8)
    with RemoteExecutor(name, rerun=True, client=client) as pool:
        pool.submit(pow, 1, 1).result()
        warm_memory(4 * array.nbytes)
        start = time.perf_counter()
        back = pool.submit(identity, array).result()
        trip = time.perf_counter() - start
        assert back.shape == array.shape and back[-1] == array[-1]
    streams = transport.streams()
    client.close()
    return {"up": up, "down": down, "trip": trip, "streams": streams}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--delay", type=float, default=10.0, help="ms each way")
    parser.add_argument("--transport", choices=[*TRANSPORTS, "both"], default="both")
    args = parser.parse_args()
    chosen = TRANSPORTS if args.transport == "both" else (args.transport,)
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        root = Path(tmp)
        server = start_sshd(root / "sshd")
        relay = start_relay((server.host, server.port), args.delay / 1000)
        try:
            known = root / "known_hosts_far"
            known.write_text(relay.known_hosts_line(server.known_hosts_line("ssh-ed25519")))
            entries = {t: {**settings(server, root, t), "port": relay.port,
                           "known_hosts": str(known)} for t in chosen}
            config = root / "hosts.yaml"
            config.write_text("hosts:\n" + "".join(
                f"  {t}:\n" + "".join(f"    {k}: {v}\n" for k, v in entry.items())
                for t, entry in entries.items()))
            os.environ.update(REMOTE_MAGIC_CONFIG=str(config),
                              REMOTE_MAGIC_HOME=str(root / "data"))
            blob = root / "blob.rmns"
            dump_namespace({"a": np.random.default_rng(1).random(args.mib * 2**20 // 8)}, blob)
            mb = blob.stat().st_size / 1e6
            print(f"SSH through a relay {args.delay:g} ms each way (round trip "
                  f"{2 * args.delay:g} ms), {os.cpu_count()} cores; {mb:.0f} MB")
            for t in chosen:
                scp_up, scp_down = scp(server, relay.port, known, blob, root, CIPHERS[t])
                f = ours(HostConfig(name=t, **entries[t]), blob, root, args.mib)
                print(f"transport: {t} ({f['streams']} streams)")
                print(f"  scp:         up {mb / scp_up:6.1f} MB/s, down {mb / scp_down:6.1f} MB/s")
                print(f"  raw channel: up {mb / f['up']:6.1f} MB/s = {scp_up / f['up']:.2f}x scp, "
                      f"down {mb / f['down']:6.1f} MB/s = {scp_down / f['down']:.2f}x scp")
                print(f"  array up and back through a task: {2 * mb / f['trip']:6.1f} MB/s "
                      f"({f['trip']:.1f} s) = {(scp_up + scp_down) / f['trip']:.2f}x scp up+down")
        finally:
            relay.stop()
            server.stop()


if __name__ == "__main__":
    main()
