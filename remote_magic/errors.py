"""Exceptions a user can see.

Every error the user can fix derives from `RemoteMagicError`; the magics render those as a
short message, never as a traceback through this package. `RemoteTaskError` is different: the
cell itself failed on the host, and its remote traceback is what the user needs.
"""

from __future__ import annotations


class RemoteMagicError(Exception):
    """A problem the user can fix; its message says what to do."""


class ConfigError(RemoteMagicError):
    """The hosts file is unreadable or wrong; names the file and the key."""

    def __init__(self, message: str, path: object = None, key: str | None = None) -> None:
        self.path = path
        self.key = key
        where = []
        if path is not None:
            where.append(str(path))
        if key:
            where.append(f"key '{key}'")
        prefix = f"{': '.join(where)}: " if where else ""
        super().__init__(f"{prefix}{message}")


class OptionError(RemoteMagicError):
    """A cell option or executor argument has a value that cannot work."""


class UnknownHostError(RemoteMagicError):
    """A host name that the configuration does not define."""

    def __init__(self, name: str, known: list[str], source: object = None) -> None:
        self.name = name
        self.known = known
        origin = f" in {source}" if source else ""
        super().__init__(
            f"Unknown host '{name}'. Configured hosts{origin}: {', '.join(sorted(known))}. "
            "Add it under 'hosts:' in the hosts file, or pick one of these with -q."
        )


class CaptureError(RemoteMagicError):
    """The cell cannot be analysed (syntax error, star import, IPython syntax)."""


class SerializationError(RemoteMagicError):
    """A variable cannot be pickled; names the variable and its type."""

    def __init__(self, name: str, value: object, cause: BaseException) -> None:
        self.name = name
        self.type_name = f"{type(value).__module__}.{type(value).__qualname__}"
        self.cause = cause
        super().__init__(
            f"Variable '{name}' (type {self.type_name}) cannot be sent: {cause}. "
            "Create it inside the cell, or leave it out of the inputs."
        )


class TaskNotFoundError(RemoteMagicError):
    """No task with that id (or prefix) in the task store."""


class TransportError(RemoteMagicError):
    """The host could not be reached or the agent on it failed."""


class AgentStartError(TransportError):
    """The host was reached but the resident agent did not start there."""


class HostKeyError(TransportError):
    """The host's key is unknown or has changed: nothing was sent to it."""


class AuthenticationError(TransportError):
    """No offered credential was accepted."""


class RemoteTaskError(RemoteMagicError):
    """The cell raised on the host. `remote_traceback` is the formatted remote traceback.

    `error_for` builds a subclass that also derives from the original exception type, so that
    `except ZeroDivisionError:` still catches a remote ZeroDivisionError.
    """

    remote_type: str = "Exception"
    remote_traceback: str = ""
    task_id: str = ""

    def __init__(self, message: str, *, remote_type: str = "Exception",
                 remote_traceback: str = "", task_id: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback
        self.task_id = task_id

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TaskFailedError(RemoteTaskError):
    """The task ended without a Python exception to show (killed, lost, timed out)."""


_error_classes: dict[type, type] = {}


def error_for(original: type | None, message: str, **info: str) -> RemoteTaskError:
    """A RemoteTaskError that is also an instance of `original` when Python allows it."""
    cls: type = RemoteTaskError
    if original is not None and issubclass(original, Exception):
        cls = _error_classes.get(original)  # type: ignore[assignment]
        if cls is None:
            try:
                cls = type(original.__name__, (RemoteTaskError, original),
                           {"__module__": original.__module__,
                            "__init__": RemoteTaskError.__init__,
                            "__str__": RemoteTaskError.__str__})
            except TypeError:  # incompatible layouts: keep the base class
                cls = RemoteTaskError
            _error_classes[original] = cls
    return cls(message, **info)
