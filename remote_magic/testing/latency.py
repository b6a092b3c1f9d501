"""A loopback TCP relay that delays every byte by a fixed time each way: a distant host, here.

An SSH host across a continent is 20-100 ms away, and over such a link what limits one SSH
channel is not the CPU but its flow-control window: a sender may have only so many bytes
unacknowledged (OpenSSH's channels: 2 MiB), so one channel moves at most a window per round
trip. This machine's kernel has no netem, so the delay is made here: :func:`start_relay`
listens on a free loopback port and forwards each connection to `target`, holding what it
reads for `delay` seconds before writing it on. Bandwidth is not limited (the relay buffers
what the window lets through), so what a transfer gains over the relay is what it gains from
more bytes in flight.

Point a client at ``relay.port`` instead of the server's; a host key pinned as
``[127.0.0.1]:PORT`` needs a line for the relay's port too (:meth:`Relay.known_hosts_line`).
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from dataclasses import dataclass, field

READ = 256 * 1024


@dataclass
class Relay:
    port: int
    delay: float
    _listener: socket.socket
    _stopped: threading.Event = field(default_factory=threading.Event)

    def known_hosts_line(self, line: str) -> str:
        """`line` (a known_hosts line for the server's ``[host]:port``) for the relay's port."""
        names, rest = line.split(" ", 1)
        host = names.strip("[").split("]")[0]
        return f"[{host}]:{self.port} {rest}"

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()


def start_relay(target: tuple[str, int], delay: float) -> Relay:
    """Relay connections to `target`, each byte `delay` seconds late in either direction
    (a round trip takes twice `delay` more)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    relay = Relay(listener.getsockname()[1], delay, listener)
    threading.Thread(target=_accept, args=(relay, target), daemon=True).start()
    return relay


def _accept(relay: Relay, target: tuple[str, int]) -> None:
    while not relay._stopped.is_set():
        try:
            near, _ = relay._listener.accept()
        except OSError:
            return
        far = socket.create_connection(target)
        for sock in (near, far):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for source, sink in ((near, far), (far, near)):
            _Direction(source, sink, relay.delay).start()


class _Direction:
    """One way of one connection: a reader that stamps what it reads, a writer that sends
    each piece once its time has come."""

    def __init__(self, source: socket.socket, sink: socket.socket, delay: float) -> None:
        self.source, self.sink, self.delay = source, sink, delay
        self.pieces: collections.deque[tuple[float, bytes]] = collections.deque()
        self.ready = threading.Condition()

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.source.recv(READ)
            except OSError:
                data = b""
            with self.ready:
                self.pieces.append((time.monotonic() + self.delay, data))
                self.ready.notify()
            if not data:
                return

    def _write(self) -> None:
        while True:
            with self.ready:
                while not self.pieces:
                    self.ready.wait()
                due, data = self.pieces.popleft()
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            try:
                if not data:
                    self.sink.shutdown(socket.SHUT_WR)
                    return
                self.sink.sendall(data)
            except OSError:
                return
