"""The worker: what an allocation's batch job runs on its node, for as long as the job lasts.

It starts the tasks sent to the allocation, at most `slots` at once, in warm runners forked
ahead (warm.py), as a host's agent starts its tasks; their files are in the shared work
directory, so the login node's agents read their state, output and results as for any task.
Tasks reach it through the allocation's queue folder (allocation.py), which it looks at every
QUEUE_SCAN seconds; an agent on the login node that holds a link to it (TCP, after both sides
proved they know the allocation's secret) says "look now", asks it to kill a task, or to
stop, and hears at once when a task started or ended.

It is the job's own process: it ends with the job (the scheduler ends the job's processes at
its walltime or cancel), and nothing it starts outlives the job. Standard library only.

    python -m remote_magic.host.worker ALLOC_DIR --workdir WORKDIR
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..wire.protocol import FrameReader, encode
from ..wire.states import FINAL_STATES, State
from ..wire.taskdir import HEARTBEAT_INTERVAL, read_state, set_state, write_json
from .agent import Agent
from .allocation import (
    GREETING,
    HANDSHAKE_TIMEOUT,
    LINE_MAX,
    AllocPaths,
    check_proof,
    new_nonce,
    proof,
)
from .proctitle import set_name
from .runner import KILL_GRACE

QUEUE_SCAN = 0.5  # seconds between looks at the queue folder when nobody says "look now"
ADDRESS_VARIABLE = "REMOTE_MAGIC_WORKER_ADDRESS"  # a site's choice of interface, if needed


class Peer:
    """One connection: proving itself until `open`, then framed messages."""

    def __init__(self, sock: socket.socket, nonce: str) -> None:
        self.sock, self.nonce = sock, nonce
        self.open = False
        self.buffer = b""
        self.reader = FrameReader()
        self.deadline = time.monotonic() + HANDSHAKE_TIMEOUT


class Worker:
    def __init__(self, alloc_root: str | os.PathLike, workdir: str, warm: bool = True) -> None:
        self.paths = AllocPaths(alloc_root)
        self.workdir = workdir
        self.warm = warm
        self.running: set[str] = set()
        self.killed: set[str] = set()
        self.peers: dict[socket.socket, Peer] = {}
        self.stopping = False

    def run(self) -> int:
        set_name("rm-worker")
        spec = self.paths.read_spec()
        self.slots = max(1, int(spec.get("slots") or 1))
        try:
            self.key = self.paths.key()
        except OSError as exc:  # no secret, or one others can read: no port is opened
            self.paths.end(State.FAILED, str(exc))
            print(f"remote_magic worker: {exc}", file=sys.stderr)
            return 1
        self.agent = agent = Agent(self.workdir)
        if agent.refusal is not None:
            self.paths.end(State.FAILED, str(agent.refusal))
            print(agent.refusal, file=sys.stderr)
            return 1
        wake_r, wake_w = socket.socketpair()
        for sock in (wake_r, wake_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.selector = selectors.DefaultSelector()
        self.listener = listen()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(wake_r, selectors.EVENT_READ)
        if self.warm:
            from .warm import WarmPool

            agent.warm = WarmPool(agent.workdir, agent.tasks_dir)
            agent.warm.start()
            self.selector.register(agent.warm.events_r, selectors.EVENT_READ)
        address, port = self.listener.getsockname()[:2]
        self.paths.heartbeat.touch()
        write_json(self.paths.worker, {
            "host": socket.gethostname(), "address": address, "port": port, "pid": os.getpid(),
            "started": time.time(), "slots": self.slots})
        beat = 0.0
        while not (self.stopping and (not self.running or time.monotonic() > self.stop_by)):
            for key, _ in self.selector.select(QUEUE_SCAN):
                if key.fileobj is self.listener:
                    self.accept()
                elif key.fileobj is wake_r:
                    try:
                        wake_r.recv(4096)
                    except BlockingIOError:
                        pass
                    self.finished(agent.reap())
                elif agent.warm is not None and key.fileobj == agent.warm.events_r:
                    self.finished(agent.warm.events())
                else:
                    self.hear(key.fileobj)  # type: ignore[arg-type]
            agent.start_overdue()
            self.fill()
            self.cancelled()
            now = time.monotonic()
            if now - beat >= HEARTBEAT_INTERVAL:
                beat = now
                self.paths.heartbeat.touch()
                self.drop_slow(now)
        return 0

    # ------------------------------------------------------------ tasks

    def fill(self) -> None:
        """Start queued tasks, oldest first, while a slot is free."""
        if self.stopping:
            return
        for entry, task_id in self.paths.waiting():
            if len(self.running) >= self.slots:
                return
            try:
                entry.unlink()
            except FileNotFoundError:  # taken back: it was killed before it started
                continue
            try:
                paths = self.agent.paths(task_id)
                record = read_state(paths)
                if record["state"] in FINAL_STATES:
                    continue
                if paths.cancel.exists():
                    set_state(paths, State.CANCELLED, "cancelled by the user")
                    self.tell({"event": "ended", "task": task_id})
                    continue
                self.agent.launch(paths, task_id)
            except Exception as exc:  # noqa: BLE001 - the worker goes on with the others
                self.fail(task_id, f"the allocation's worker could not start it: {exc}")
                continue
            self.running.add(task_id)
            self.tell({"event": "started", "task": task_id})

    def fail(self, task_id: str, reason: str) -> None:
        try:
            set_state(self.agent.paths(task_id), State.FAILED, reason)
        except Exception:  # noqa: BLE001 - a folder gone: nothing to record
            pass
        self.tell({"event": "ended", "task": task_id})

    def finished(self, tasks: list[str]) -> None:
        for task_id in tasks:
            self.running.discard(task_id)
            self.killed.discard(task_id)
            self.tell({"event": "ended", "task": task_id})
        if tasks:
            self.fill()

    # ------------------------------------------------------------ peers

    def accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = Peer(sock, new_nonce())
        try:
            sock.sendall(GREETING + b" " + peer.nonce.encode() + b"\n")
        except OSError:
            sock.close()
            return
        self.peers[sock] = peer
        self.selector.register(sock, selectors.EVENT_READ)

    def hear(self, sock: socket.socket) -> None:
        peer = self.peers.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.drop(sock)
            return
        if not peer.open:
            peer.buffer += data
            if b"\n" not in peer.buffer:
                if len(peer.buffer) > LINE_MAX:
                    self.drop(sock)
                return
            line, _, rest = peer.buffer.partition(b"\n")
            words = line.decode(errors="replace").split()
            if len(words) != 2 or not check_proof(self.key, peer.nonce, "agent", words[0]):
                self.drop(sock)  # not one of ours: no word about why
                return
            peer.open, peer.buffer = True, b""
            if not self.send(peer, b"ok " + proof(self.key, words[1][:64], "worker").encode()
                             + b"\n"):
                return
            data = rest
            if not data:
                return
        try:
            messages = peer.reader.feed(data)
        except ValueError:
            self.drop(sock)
            return
        for message, _ in messages:
            self.obey(peer, message)

    def obey(self, peer: Peer, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "poke":
            self.fill()
        elif op == "kill":
            tasks = [t for t in message.get("tasks", []) if isinstance(t, str)]
            for task_id in tasks:
                self.paths.dequeue(task_id)
            self.kill(tasks)
        elif op == "stop":
            self.paths.end(State.CANCELLED, "stopped by the user")
            self.kill(sorted(self.running))
            self.stopping = True  # once its tasks have ended, or were given time enough to
            self.stop_by = time.monotonic() + KILL_GRACE + 1.0

    def kill(self, tasks: list[str]) -> None:
        """Stop these tasks as the agent of a process host does (their pids are this node's)."""
        tasks = [t for t in tasks if t in self.running and t not in self.killed]
        if tasks:
            self.killed.update(tasks)
            try:
                self.agent.op_kill(tasks)
            except Exception:  # noqa: BLE001 - a task already gone: its files say how
                pass

    def cancelled(self) -> None:
        """Running tasks whose cancel file appeared: a kill that came with no link (the
        login node could not reach this node) is seen here."""
        self.kill([t for t in self.running if self.agent.paths(t).cancel.exists()])

    def tell(self, message: dict[str, Any]) -> None:
        data = encode(message)
        for peer in list(self.peers.values()):
            if peer.open:
                self.send(peer, data)

    def send(self, peer: Peer, data: bytes) -> bool:
        """Messages are small and agents read them at once: a peer that cannot take one
        now is dropped (it reconnects and looks at the files)."""
        try:
            sent = peer.sock.send(data)
        except OSError:
            sent = 0
        if sent != len(data):
            self.drop(peer.sock)
            return False
        return True

    def drop(self, sock: socket.socket) -> None:
        if self.peers.pop(sock, None) is not None:
            self.selector.unregister(sock)
        sock.close()

    def drop_slow(self, now: float) -> None:
        for sock, peer in list(self.peers.items()):
            if not peer.open and now > peer.deadline:
                self.drop(sock)


def listen() -> socket.socket:
    """A listening socket on the address this node's name resolves to (what the login node
    reaches it by), or the one a site names in REMOTE_MAGIC_WORKER_ADDRESS; a free port."""
    wanted = os.environ.get(ADDRESS_VARIABLE) or socket.gethostname()
    family, _, _, _, address = socket.getaddrinfo(wanted, 0, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((address[0], 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m remote_magic.host.worker")
    parser.add_argument("allocation", help="the allocation's folder (workdir/allocs/NAME)")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--cold", action="store_true", help="no warm runners")
    args = parser.parse_args(argv)
    return Worker(Path(args.allocation), args.workdir, warm=not args.cold).run()


if __name__ == "__main__":
    sys.exit(main())
