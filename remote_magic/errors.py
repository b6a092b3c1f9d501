"""Exceptions a user can see.

Every error the user can fix derives from `RemoteMagicError`; the magics render those as a
short message, never as a traceback through this package. `RemoteTaskError` is different: the
cell itself failed on the host, and its remote traceback is what the user needs.
"""

from __future__ import annotations

from typing import Any


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


def _remote_class(original: type) -> type:
    """A subclass of both RemoteTaskError and `original`, named as `original`, which prints
    as `original` does: the notebook shows the same type and message as a local run."""
    cls = _error_classes.get(original)
    if cls is None:
        try:
            cls = type(original.__name__, (RemoteTaskError, original), {
                "__module__": original.__module__, "__qualname__": original.__qualname__,
                "__init__": RemoteTaskError.__init__, "__str__": original.__str__,
                "__repr__": original.__repr__})
        except TypeError:  # incompatible layouts: keep the base class
            cls = RemoteTaskError
        _error_classes[original] = cls
    return cls


def error_for(original: type | None, message: str, **info: str) -> RemoteTaskError:
    """A RemoteTaskError that is also an instance of `original` when Python allows it."""
    if original is None or not issubclass(original, BaseException):
        return RemoteTaskError(message, **info)
    cls = _remote_class(original)
    error = BaseException.__new__(cls) if cls is not RemoteTaskError else None
    if error is None or not _settable(error, (message,)):
        return RemoteTaskError(message, **info)
    RemoteTaskError.__init__(error, message, **info)
    return error


def rebuild_error(original: type, args: tuple[Any, ...], attributes: dict[str, Any],
                  **info: str) -> RemoteTaskError:
    """The remote exception itself, as raised: its type, args and attributes, built without
    calling its __init__ (which may take other arguments than its args, or reword them)."""
    cls = _remote_class(original) if issubclass(original, BaseException) else RemoteTaskError
    if cls is RemoteTaskError:
        return RemoteTaskError(str(args[0]) if args else original.__name__, **info)
    try:
        error = cls.__new__(cls, *args)
    except Exception:  # noqa: BLE001 - a __new__ that wants other arguments
        error = cls.__new__(cls)
    if not _settable(error, args):
        return error_for(original, str(args[0]) if args else "", **info)
    for name, value in attributes.items():
        if value is None:  # unset C slots read as None; setting None would print "-> None"
            continue
        try:
            setattr(error, name, value)
        except (AttributeError, TypeError):  # read-only or computed: the args gave it
            pass
    for name, value in info.items():
        setattr(error, name, value)
    return error


def _settable(error: BaseException, args: tuple[Any, ...]) -> bool:
    try:
        error.args = args
    except Exception:  # noqa: BLE001
        return False
    return True


def syntax_error(exc: SyntaxError, message: str) -> CaptureError:
    """The cell does not compile: the same SyntaxError (or IndentationError) a local run
    raises, pointing at the cell's line, that is also a CaptureError (nothing was sent)."""
    kind = type(exc) if issubclass(type(exc), SyntaxError) else SyntaxError
    cls = _syntax_classes.get(kind)
    if cls is None:
        cls = _syntax_classes[kind] = type(kind.__name__, (CaptureError, kind), {
            "__module__": kind.__module__, "__qualname__": kind.__qualname__,
            "__str__": kind.__str__})
    details = (exc.filename, exc.lineno, exc.offset, exc.text, exc.end_lineno,
               exc.end_offset)
    return cls(message, details)


_syntax_classes: dict[type, type] = {}


ECHO_LIMIT = 80


def clipped(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` cut to about `limit` characters, keeping both ends.

    Messages repeat what the user typed or wrote in a file so that it can be found; a value of
    a megabyte (pasted by mistake, or built to flood the notebook) must not become a message of
    a megabyte. Both ends stay because a path is told apart by its start and a file by its end.
    """
    if len(text) <= limit:
        return text
    head = max(1, (limit - 1) * 2 // 3)
    tail = max(1, limit - 1 - head)
    return f"{text[:head]}…{text[-tail:]}"


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """How a message quotes a value it was given: as its repr, so that a newline or a tab shows
    as such and cannot break the message apart, and bounded by `limit` in length and in the
    work it takes, since a value built from YAML aliases can be exponentially large."""
    import reprlib

    if isinstance(value, str):
        return repr(clipped(value, limit))
    bounded = reprlib.Repr()
    bounded.maxlevel, bounded.maxstring, bounded.maxother, bounded.maxlong = 3, limit, limit, 40
    bounded.maxlist = bounded.maxtuple = bounded.maxdict = bounded.maxset = 6
    try:
        shown = bounded.repr(value)
    except Exception:  # noqa: BLE001 - a repr that fails must not hide the real message
        shown = f"<{type(value).__name__}>"
    return clipped(shown, limit * 2)


class SweepFailedError(RemoteMagicError):
    """Elements of a sweep did not complete. The completed elements' results were loaded;
    `errors` holds each failed element's exception by index (the first is the cause)."""

    def __init__(self, message: str, errors: dict[int, BaseException]) -> None:
        super().__init__(message)
        self.errors = errors
