"""Where a trivial RemoteExecutor call over SSH spends its time, phase by phase.

Starts a private sshd (remote_magic.testing.sshd), makes warm-up calls, then times N calls
one after another and prints, for each phase boundary in the calling process, its median
time since the call began: preparing, recording, staging and starting (one request), the
agent's end event, loading the result. What lies between "start returned" and "the end
event" is the host's work and the way back.

    python bench/ssh_phases.py [--transport paramiko|openssh] [-n 40] [--gap 0]

The phases are found by wrapping the client's own functions in this process; nothing in the
package is changed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from ssh_task import settings  # the same host entry as bench/ssh_task.py

from remote_magic import RemoteExecutor
from remote_magic.client import core, executor, session
from remote_magic.client.core import Client
from remote_magic.client.transport.ssh import SSHTransport
from remote_magic.testing.sshd import start_sshd

STAMPS: dict[str, list[float]] = defaultdict(list)


def stamp(name: str) -> None:
    STAMPS[name].append(time.perf_counter())


def wrapped(owner: Any, attribute: str, label: str) -> None:
    """Stamp `label>` when owner.attribute is called and `label<` when it returns."""
    original: Callable[..., Any] = getattr(owner, attribute)

    def timed(*args: Any, **kwargs: Any) -> Any:
        stamp(label + ">")
        try:
            return original(*args, **kwargs)
        finally:
            stamp(label + "<")

    setattr(owner, attribute, timed)


PHASES = [(executor, "prepare_call", "prepare"), (Client, "accept", "record"),
          (Client, "start", "stage+start"), (session.HostSession, "_on_event", "end event"),
          (Client, "result", "load result"), (SSHTransport, "results", "copy results"),
          (core, "load_result", "unpickle")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", choices=["paramiko", "openssh"], default="paramiko")
    parser.add_argument("-n", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between calls")
    args = parser.parse_args()
    for owner, attribute, label in PHASES:
        wrapped(owner, attribute, label)
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        root = Path(tmp)
        server = start_sshd(root / "sshd")
        try:
            entry = settings(server, root, args.transport)
            (root / "hosts.yaml").write_text(
                "hosts:\n  bench:\n" + "".join(f"    {k}: {v}\n" for k, v in entry.items()))
            os.environ.update(REMOTE_MAGIC_CONFIG=str(root / "hosts.yaml"),
                              REMOTE_MAGIC_HOME=str(root / "data"))
            client = Client()
            with RemoteExecutor("bench", rerun=True, client=client) as pool:
                for _ in range(5):  # connect, ship the runtime, warm the runners
                    pool.submit(pow, 1, 1).result()
                STAMPS.clear()
                for i in range(args.n):
                    stamp("call>")
                    pool.submit(pow, 2, i).result()
                    stamp("call<")
                    time.sleep(args.gap)
            client.close()
        finally:
            server.stop()
    began = STAMPS["call>"]
    # (the session's last event is the connection closing, after the last call)
    rows = {name: statistics.median((t - b) * 1000 for t, b in zip(times, began))
            for name, times in STAMPS.items() if len(times) >= args.n}
    print(f"trivial RemoteExecutor call over SSH ({args.transport}), median of {args.n}, "
          f"{args.gap * 1000:.0f} ms between calls; ms since the call began:")
    for name, at in sorted(rows.items(), key=lambda row: row[1]):
        print(f"  {name:16s} {at:7.2f}")


if __name__ == "__main__":
    main()
