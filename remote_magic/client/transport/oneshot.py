"""The fallback when the resident agent cannot run on a host: one remote command per request.

Every operation is still the agent's own code (`python -m remote_magic.host.agent --once` answers
the requests it reads on stdin), so nothing is implemented twice; files move with the
connection's own copy (SFTP with paramiko, `cat` in a session with OpenSSH) instead of the
streaming channel. It is slow (a remote shell start per request, and polls with it), so
`remote-magic test` says when a host runs this way, and why.
"""

from __future__ import annotations

from typing import Any, Callable, Union

from ...errors import TransportError
from ...wire.protocol import MARKER, FrameReader, encode
from ..agent_client import failure
from .connection import Connection
from .openssh import OpenSSHConnection

AnyConnection = Union[Connection, OpenSSHConnection]


class OneShotAgent:
    """Answers like AgentClient, one remote command per request."""

    alive = True

    def __init__(self, connection: Callable[[], AnyConnection], command: str, label: str) -> None:
        self._connection = connection
        self._command = command
        self._label = label

    def request(self, op: str, timeout: float | None = 60.0, **args: Any) -> Any:
        return self.call(op, args, timeout=timeout)[0]

    def call(self, op: str, args: dict[str, Any], payload: bytes = b"",
             timeout: float | None = 60.0,
             sink: Callable[[bytes], None] | None = None) -> tuple[Any, bytes]:
        frame = encode({"id": 1, "op": op, "args": args}, payload)
        status, out, err = self._connection().exchange(self._command, frame, timeout)
        if MARKER not in out:
            raise TransportError(f"{self._label}: the agent command failed (exit status "
                                 f"{status}): {err.decode(errors='replace').strip()[-500:]}")
        for message, data in FrameReader().feed(out.split(MARKER, 1)[1]):
            if "stream" in message:
                if sink is not None:
                    sink(data)
            elif message.get("id") == 1:
                if not message.get("ok"):
                    raise failure(message, op, self._label, self._label)
                return message.get("result"), data
        raise TransportError(f"{self._label}: no answer to {op} (exit status {status})")

    def close(self) -> None:
        """Nothing stays open between requests."""

