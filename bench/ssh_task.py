"""Tasks over SSH on loopback, against the floors measured in the same run.

Starts a private sshd (remote_magic.testing.sshd) and measures:
  * floors: `ssh host true` (OpenSSH client, a new login each time) and a paramiko
    `exec_command('true')` on an already open connection;
  * for each transport (paramiko, the default, and `transport: openssh`, the system's ssh
    over one master connection):
    - the median time of a trivial `%%remote -q HOST --rerun` cell through a real kernel,
      and of a trivial call through RemoteExecutor (submit, then result) in this process;
    - 20 trivial tasks submitted at once (RemoteExecutor), total time;
    - the transport's raw upload and download of a 1 GiB file;
    - a 1 GiB numpy array to the host and back through a task, in MB/s, against `scp` of
      the same bytes up and down: `--rounds` pairs (scp, then ours), each pair's ratio
      printed and their median taken, so that both sides of a ratio met the same machine.

    python bench/ssh_task.py [-n 20] [--mib 1024] [--rounds 3] [--transport paramiko|openssh|both]

The files go under the home directory, as a cluster's work directory would; the transfers
write several GiB, so the disk's writeback is part of the figures.

Each timed bulk transfer, ours and scp's alike, starts right after `warm_memory`: on a virtual
machine whose kernel hands freed memory back to the hypervisor (free page reporting, as on
this Firecracker VM), the first write to each page of a fresh GiB costs more than the copy
itself, so whichever transfer happens to run on returned memory would look several times
slower (measured here: a 1 GiB download at 173-180 MB/s cold against 570 MB/s warm).
`--cold` leaves the memory as it is.
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
from remote_magic.client.transport.openssh import OpenSSHConnection
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


def warm_memory(nbytes: int) -> None:
    """Write, then free, `nbytes` of memory (at most half of what is available), so that
    the next transfer's pages are ones the hypervisor has already backed (see the top)."""
    if COLD:
        return
    available = next(int(line.split()[1]) * 1024
                     for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemAvailable:"))
    bytearray(min(nbytes, available // 2))  # zero-filled: every page written once


COLD = False  # --cold: no warm_memory


def identity(array):
    return array


TRANSPORTS = ("paramiko", "openssh")


def settings(server, root: Path, transport: str) -> dict[str, object]:
    return {"address": f"{server.user}@{server.host}", "port": server.port,
            "identity_file": str(server.key_path), "known_hosts": str(server.known_hosts),
            "python": sys.executable, "workdir": str(root / "remote"), "transport": transport}


def through_tasks(kc, name: str, n: int) -> dict[str, float]:
    """One transport's figures for small tasks: a trivial cell and call, 20 tasks at once."""
    cell(kc, f"%%remote -q {name} --rerun\ny = x + 1")  # connect (and ship the runtime)
    per_task = timed(lambda: cell(kc, f"%%remote -q {name} --rerun\ny = x + 1"), n)
    client = Client()
    with RemoteExecutor(name, rerun=True, client=client) as pool:
        pool.submit(pow, 1, 1).result()
        call = timed(lambda: pool.submit(pow, 2, 3).result(), n)
        start = time.perf_counter()
        futures = [pool.submit(pow, 2, i) for i in range(20)]
        [f.result() for f in futures]
        twenty = time.perf_counter() - start
    client.close()
    return {"cell": ms(per_task), "call": ms(call), "twenty": twenty * 1000}


def bulk_rounds(name: str, server, root: Path, mib: int, cipher: str,
                rounds: int) -> dict[str, list]:
    """`rounds` times: scp of the array's file up and down, then the array up and back through
    a task. Paired so, each ratio compares two copies made in the same state of the machine
    (its memory and disk move the figures by a third from one minute to the next)."""
    client = Client()
    out: dict[str, list] = {"scp": [], "array": [], "memory": []}
    with RemoteExecutor(name, rerun=True, client=client) as pool:
        pool.submit(pow, 1, 1).result()
        before = rss()
        array = np.random.default_rng(0).random(mib * 2**20 // 8)
        blob = root / "array.rmns"
        dump_namespace({"a": array}, blob)
        for _ in range(rounds):
            out["scp"].append(scp(server, blob, root, cipher))
            warm_memory(4 * array.nbytes)  # the round trip writes about three copies
            Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again here
            start = time.perf_counter()
            back = pool.submit(identity, array).result()
            out["array"].append(time.perf_counter() - start)
            out["memory"].append((rss("VmHWM") - before) / array.nbytes)
            assert back.shape == array.shape and back[-1] == array[-1]
            del back
        blob.unlink()
    out["streams"] = [client.session(name).transport.streams()]
    client.close()
    return out


def rss(field: str = "VmRSS") -> int:
    """This process's resident memory now (VmHWM: its peak), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def raw_channel(host: HostConfig, blob: Path, back: Path) -> tuple[float, float, str]:
    """The transport's own upload and download of `blob` (seconds each), on a connection
    and transfer agents already open, and its cipher."""
    transport = SSHTransport(host, lambda event: None)
    size = blob.stat().st_size
    # the login and the agents' start are not the channel's speed: a first upload starts
    # them all (one per parallel stream, to a distant host)
    if transport.streams() > 1:
        transport.upload(blob, "raw-copy")
    warm_memory(2 * size)
    start = time.perf_counter()
    transport.upload(blob, "raw-copy")
    up = time.perf_counter() - start
    warm_memory(2 * size)
    start = time.perf_counter()
    transport.download("raw-copy", back, size)
    down = time.perf_counter() - start
    back.unlink()
    conn = transport.connection()
    if isinstance(conn, OpenSSHConnection):  # its first choice, which our sshd takes
        cipher = subprocess.run([*conn.argv("true")[:-2], "-G", conn.target.destination],
                                capture_output=True, text=True).stdout
        cipher = next(line.split()[1].split(",")[0] for line in cipher.splitlines()
                      if line.startswith("ciphers "))
    else:
        cipher = conn.transport.remote_cipher
    transport.close()
    return up, down, cipher


def scp(server, blob: Path, root: Path, cipher: str) -> tuple[float, float]:
    """Seconds for `scp -c cipher` of `blob` up, then back down."""
    args = [*server.scp_args(), "-c", cipher]
    size = blob.stat().st_size
    warm_memory(2 * size)
    start = time.perf_counter()
    subprocess.run([*args, str(blob), f"{server.user}@{server.host}:{root}/scp-copy"],
                   check=True)
    up = time.perf_counter() - start
    warm_memory(2 * size)
    start = time.perf_counter()
    subprocess.run([*args, f"{server.user}@{server.host}:{root}/scp-copy",
                    str(root / "scp-back")], check=True)
    down = time.perf_counter() - start
    (root / "scp-copy").unlink()
    (root / "scp-back").unlink()
    return up, down


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3,
                        help="pairs of scp and our round trip, for the bulk ratio")
    parser.add_argument("--transport", choices=[*TRANSPORTS, "both"], default="both")
    parser.add_argument("--cold", action="store_true",
                        help="do not warm the memory before each bulk transfer")
    args = parser.parse_args()
    global COLD
    COLD = args.cold
    chosen = TRANSPORTS if args.transport == "both" else (args.transport,)
    # the host's work directory under the home directory, as on a cluster (and as the localhost
    # bench has it: on this machine /tmp, where tests churn files, creates them far slower)
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        root = Path(tmp)
        server = start_sshd(root / "sshd")
        try:
            hosts = {t: HostConfig(name=t, **settings(server, root, t)) for t in TRANSPORTS}
            config = root / "hosts.yaml"
            config.write_text("hosts:\n" + "".join(
                f"  {t}:\n" + "".join(f"    {k}: {v}\n"
                                      for k, v in settings(server, root, t).items())
                for t in TRANSPORTS))
            os.environ.update(REMOTE_MAGIC_CONFIG=str(config),
                              REMOTE_MAGIC_HOME=str(root / "data"))

            # floors
            ssh_true = timed(lambda: subprocess.run([*server.ssh_args(), "true"], check=True),
                             args.n)
            conn = connect(target_for(hosts["paramiko"]))
            exec_true = timed(lambda: conn.run("true"), args.n)
            conn.close()

            figures = {}
            km, kc = start_new_kernel(kernel_name="python3", env=dict(os.environ), cwd=tmp)
            try:
                cell(kc, "%load_ext remote_magic\nx = 1")
                for t in chosen:
                    figures[t] = through_tasks(kc, t, args.n)
            finally:
                kc.stop_channels()
                km.shutdown_kernel(now=True)

            # the raw channels, then scp (with the cipher the transport used) and tasks
            array = np.random.default_rng(0).random(args.mib * 2**20 // 8)
            blob = root / "raw.rmns"
            dump_namespace({"a": array}, blob)
            nbytes = blob.stat().st_size
            del array
            for t in chosen:
                figures[t].update(zip(("up", "down", "cipher"),
                                      raw_channel(hosts[t], blob, root / "raw-back")))
            blob.unlink()
            for t in chosen:
                figures[t].update(bulk_rounds(t, server, root, args.mib, figures[t]["cipher"],
                                              args.rounds))
        finally:
            server.stop()

    mb = nbytes / 1e6
    exec_ms = ms(exec_true)
    print(f"SSH on loopback, {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
          f"medians of {args.n} (bulk: of {args.rounds} rounds); files in {Path.home()}")
    print(f"  floor: ssh host true (new login)        {ms(ssh_true):7.1f} ms")
    print(f"  floor: paramiko exec 'true' (open conn)  {exec_ms:7.1f} ms")
    for t in chosen:
        f = figures[t]
        scp_up, scp_down = (statistics.median(times) for times in zip(*f["scp"]))
        ratios = [(up + down) / ours for (up, down), ours in zip(f["scp"], f["array"])]
        array_time = statistics.median(f["array"])
        print(f"transport: {t} (cipher {f['cipher']})")
        print(f"  floor: scp with that cipher: up {mb / scp_up:6.1f} MB/s, "
              f"down {mb / scp_down:6.1f} MB/s")
        print(f"  %%remote --rerun, trivial cell          {f['cell']:7.1f} ms  "
              f"= {f['cell'] / exec_ms:.2f}x the exec round trip (target < 0.5x)")
        print(f"  RemoteExecutor call, trivial             {f['call']:7.1f} ms  "
              "(issue 12's target over SSH: <= 10 ms)")
        print(f"  20 trivial tasks submitted at once       {f['twenty']:7.1f} ms total")
        print(f"  {nbytes / 2**30:.2f} GiB array up and back through a task "
              f"({f['streams'][0]} stream{'s' if f['streams'][0] > 1 else ''}): "
              f"{2 * mb / array_time:6.1f} MB/s ({array_time:.1f} s) = "
              f"{statistics.median(ratios):.2f}x scp up+down (round by round: "
              f"{', '.join(f'{r:.2f}x' for r in ratios)})")
        print(f"  raw channel: up {mb / f['up']:6.1f} MB/s, down {mb / f['down']:6.1f} MB/s")
        print(f"  sender's peak memory in the round trip: {max(f['memory']):.2f}x the payload "
              "(target <= 1.1x)")
    if len(chosen) == 2:
        ratio = figures["openssh"]["cell"] / figures["paramiko"]["cell"]
        print(f"openssh / paramiko, trivial cell: {ratio:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
