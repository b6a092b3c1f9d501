"""The kernel's end of a resident agent: requests, responses and pushed events.

Transport-neutral: it needs only a byte channel to a running `python -m remote_magic.agent`
(a local pipe, or an SSH channel). One reader thread routes responses to the requests
waiting for them and hands events (a task finished) to a callback.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Callable, Protocol

from .errors import TransportError
from .protocol import FrameReader, encode


class Channel(Protocol):
    """A bidirectional byte stream to the agent's stdin/stdout."""

    def send(self, data: bytes) -> None: ...
    def recv(self) -> bytes: ...  # blocks; b"" at end of stream
    def close(self) -> None: ...
    def describe_failure(self) -> str: ...  # why the stream ended, for the error message


class AgentClient:
    def __init__(self, channel: Channel, on_event: Callable[[dict[str, Any]], None],
                 label: str) -> None:
        self._channel = channel
        self._on_event = on_event
        self._label = label
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._closed: str | None = None
        self._reader = threading.Thread(target=self._read, name=f"agent-{label}", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._closed is None

    def request(self, op: str, timeout: float = 60.0, **args: Any) -> Any:
        """Send one request and wait for its answer; agent-side errors raise TransportError."""
        waiter = _Pending()
        with self._lock:
            if self._closed is not None:
                raise TransportError(self._closed)
            request_id = next(self._ids)
            self._pending[request_id] = waiter
            try:
                self._channel.send(encode({"id": request_id, "op": op, "args": args}))
            except OSError as exc:
                del self._pending[request_id]
                raise TransportError(f"lost the connection to {self._label}: {exc}") from exc
        if not waiter.done.wait(timeout):
            with self._lock:
                self._pending.pop(request_id, None)
            raise TransportError(f"{self._label} did not answer '{op}' within {timeout:.0f} s")
        reply = waiter.reply
        if reply is None:
            raise TransportError(self._closed or f"lost the connection to {self._label}")
        if not reply.get("ok"):
            raise TransportError(f"{self._label}: {op} failed: {reply.get('error')}")
        return reply.get("result")

    def close(self) -> None:
        self._channel.close()

    def _read(self) -> None:
        frames = FrameReader()
        try:
            while True:
                data = self._channel.recv()
                if not data:
                    break
                for message, _payload in frames.feed(data):
                    if "event" in message:
                        self._on_event(message)
                        continue
                    with self._lock:
                        waiter = self._pending.pop(message.get("id"), None)
                    if waiter is not None:
                        waiter.reply = message
                        waiter.done.set()
        except Exception as exc:  # noqa: BLE001 - any failure ends this connection
            reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = ""
        detail = reason or self._channel.describe_failure()
        with self._lock:
            self._closed = f"the agent on {self._label} stopped" + (f": {detail}" if detail else "")
            pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.done.set()
        self._on_event({"event": "closed"})


class _Pending:
    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: dict[str, Any] | None = None
