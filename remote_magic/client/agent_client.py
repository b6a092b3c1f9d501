"""The kernel's end of a resident agent: requests, responses and pushed events.

Transport-neutral: it needs only a byte channel to a running `python -m remote_magic.host.agent`
(a local pipe, or an SSH channel). One reader thread routes responses to the requests
waiting for them and hands events (a task finished) to a callback.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from typing import Any, Callable, Protocol

from ..errors import TransportError
from ..wire.diskwrite import write_all
from ..wire.protocol import FrameReader, encode_header
from ..wire.taskdir import Refusal

log = logging.getLogger(__name__)


class Channel(Protocol):
    """A bidirectional byte stream to the agent's stdin/stdout, past the agent's marker."""

    def send(self, data: bytes) -> None: ...
    def recv(self) -> bytes: ...  # blocks; b"" at end of stream
    # and, if it can move what comes next into a file itself (SSH), splice_to(fd, count) -> int
    def close(self) -> None: ...
    def describe_failure(self) -> str: ...  # why the stream ended, for the error message


class AgentClient:
    def __init__(self, channel: Channel, on_event: Callable[[dict[str, Any]], None],
                 label: str, host: str | None = None) -> None:
        self._channel = channel
        self._on_event = on_event
        self._label = label
        self._host = host or label  # the name refusals give the host (the label may say more)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._closed: str | None = None
        self._reader = threading.Thread(target=self._read, name=f"agent-{label}", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._closed is None

    def request(self, op: str, timeout: float | None = 60.0, **args: Any) -> Any:
        """Send one request and wait for its answer; agent-side errors raise TransportError."""
        return self.call(op, args, timeout=timeout)[0]

    def call(self, op: str, args: dict[str, Any], payload: bytes = b"",
             timeout: float | None = 60.0,
             sink: Callable[[bytes], None] | int | None = None) -> tuple[Any, bytes]:
        """A request with a payload; returns the result and the reply's payload.

        `sink` receives the chunks of a streamed answer as they arrive, in order: a function
        called with each, or a file descriptor they are written to (moved there from the
        channel without passing through Python, where the channel allows). The reader writes
        to a duplicate of that descriptor, which it alone closes: were the caller to give up
        first (a timeout, Ctrl-C) and close its own, the rest of the answer could not land in
        a file opened since under the same number. Giving up on such an answer closes the
        channel, which ends the stream on the far side at once (the next request needs a
        new channel), rather than receiving the rest for nobody.
        """
        waiter = _Pending(os.dup(sink) if isinstance(sink, int) else sink)
        with self._lock:
            request_id = next(self._ids)
            self._pending[request_id] = waiter
        began = time.monotonic()
        # the operation and sizes only: arguments and payloads can hold the user's data
        log.debug("%s: request %d %s (%d bytes attached)", self._label, request_id, op,
                  len(payload))
        try:
            self._send({"id": request_id, "op": op, "args": args}, payload)
        except TransportError:
            with self._lock:
                self._pending.pop(request_id, None)
            waiter.close()
            raise
        try:
            answered = waiter.done.wait(timeout)
        except BaseException:  # Ctrl-C
            self._give_up(request_id, waiter)
            raise
        if not answered:
            self._give_up(request_id, waiter)
            raise TransportError(f"{self._label} did not answer '{op}' within {timeout:.0f} s")
        reply = waiter.reply
        if reply is None:
            raise TransportError(self._closed or f"lost the connection to {self._label}")
        log.debug("%s: answer %d %s %s in %.1f ms", self._label, request_id, op,
                  "ok" if reply.get("ok") else f"error {reply.get('type', '')}",
                  (time.monotonic() - began) * 1000)
        if not reply.get("ok"):
            raise failure(reply, op, self._label, self._host)
        return reply.get("result"), waiter.payload

    def _give_up(self, request_id: int, waiter: _Pending) -> None:
        if isinstance(waiter.sink, int):  # the reader lets go of its descriptor as it ends
            self._channel.close()
            return
        with self._lock:
            self._pending.pop(request_id, None)

    def send_oneway(self, op: str, args: dict[str, Any], payload: bytes = b"") -> None:
        """A message the agent does not answer (a chunk of an upload)."""
        self._send({"op": op, "args": args}, payload)

    def _send(self, message: dict[str, Any], payload: bytes) -> None:
        with self._send_lock:
            if self._closed is not None:
                raise TransportError(self._closed)
            try:
                self._channel.send(encode_header(message, len(payload)))
                if payload:
                    self._channel.send(payload)
            except OSError as exc:
                raise TransportError(f"lost the connection to {self._label}: {exc}") from exc

    def close(self) -> None:
        self._channel.close()

    def _read(self) -> None:
        frames = FrameReader()
        reason = ""
        try:
            while True:
                data = self._channel.recv()
                if not data:
                    break
                for message, payload in frames.feed(data):
                    self._dispatch(message, payload)
                if not self._splice_rest(frames):
                    break
        except Exception as exc:  # noqa: BLE001 - any failure ends this connection
            reason = f"{type(exc).__name__}: {exc}"
        detail = reason or self._channel.describe_failure()
        with self._lock:
            self._closed = f"the agent on {self._label} stopped" + (f": {detail}" if detail else "")
            pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.close()
            waiter.done.set()
        self._on_event({"event": "closed"})

    def _splice_rest(self, frames: FrameReader) -> bool:
        """A streamed chunk bound for a file, of which only the start has come: the rest
        goes from the channel into the file itself. False if the channel ended meanwhile."""
        splice_to = getattr(self._channel, "splice_to", None)
        message = frames.pending() if splice_to is not None else None
        if message is None or "stream" not in message:
            return True
        with self._lock:
            waiter = self._pending.get(message["stream"])
        if waiter is None or not isinstance(waiter.sink, int):
            return True
        came, rest = frames.take()
        write_all(waiter.sink, came)
        while rest:
            moved = splice_to(waiter.sink, rest)
            if not moved:
                return False
            rest -= moved
        return True

    def _dispatch(self, message: dict[str, Any], payload: bytes) -> None:
        if "event" in message:
            self._on_event({**message, "payload": payload} if payload else message)
            return
        streamed = "stream" in message
        with self._lock:
            if streamed:
                waiter = self._pending.get(message["stream"])
            else:
                waiter = self._pending.pop(message.get("id"), None)
        if waiter is None:
            return
        if streamed:
            if isinstance(waiter.sink, int):
                write_all(waiter.sink, payload)
            elif waiter.sink is not None:
                waiter.sink(payload)
            return
        waiter.close()
        waiter.reply, waiter.payload = message, payload
        waiter.done.set()


def failure(reply: dict[str, Any], op: str, label: str, host: str) -> TransportError:
    """The error for a failed request. A refusal (an unsafe work directory, a full disk) is
    the agent's message to the user, whole, with the host's name put in; anything else is
    an internal failure, shown with the operation that failed."""
    if reply.get("refused"):
        return TransportError(Refusal(str(reply.get("error"))).for_host(host))
    return TransportError(f"{label}: {op} failed: {reply.get('error')}")


class _Pending:
    __slots__ = ("done", "payload", "reply", "sink")

    def __init__(self, sink: Callable[[bytes], None] | int | None = None) -> None:
        self.done = threading.Event()
        self.reply: dict[str, Any] | None = None
        self.payload = b""
        self.sink = sink

    def close(self) -> None:
        """Let go of a file descriptor sink (the reader's own duplicate)."""
        if isinstance(self.sink, int):
            os.close(self.sink)
            self.sink = None
