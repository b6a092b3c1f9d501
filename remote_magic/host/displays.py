"""What a task displays, recorded on the host in the order it happens.

Each display (an object, a figure, `clear_output`, an update of a display by id) becomes an
entry stamped with how far the task's stdout and stderr had got at that moment, so that the
kernel can interleave them with the printed output exactly as a local cell would show them.
Entries are appended to the task's `events` file as they happen (small ones with their
payload, large ones as a placeholder), so the kernel shows them while the task runs; all of
them, with payloads, are also written to `displays.rmns` at the end.

An object is kept pickled: the kernel displays it itself, with its own formatters, as IPython
would. One that cannot be pickled, or whose pickle would drag a matplotlib figure along (it
would come to life again in the kernel), is kept as the MIME bundle of its `_repr_*_` methods.
Figures are rendered here, in the formats the notebook's inline backend uses.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import sys
import types
import uuid
from pathlib import Path
from typing import Any

from ..wire.pickling import pickler_class

INLINE_EVENT = 512 * 1024  # a payload larger than this waits for the end of the task
DEFAULT_FORMATS = ("png",)
DEFAULT_FIGURE_KWARGS: dict[str, Any] = {"bbox_inches": "tight"}

current: DisplayRecorder | None = None  # the task's recorder, for the matplotlib backend

_MIME_METHODS = (
    ("text/html", "_repr_html_"), ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"), ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"), ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"), ("application/javascript", "_repr_javascript_"),
)


class DisplayRecorder:
    """Records the displays of one task (see the module's docstring)."""

    def __init__(self, events: Path | None = None, figures: dict[str, Any] | None = None
                 ) -> None:
        self.entries: list[dict[str, Any]] = []
        self.result: dict[str, Any] | None = None
        self.events = events
        self.originals: dict[str, Any] = {}  # IPython's own functions we stand in for
        # Classes the notebook sent, by id: a displayed object refers to them by name, so
        # that loading it in the kernel does not redefine the notebook's class.
        self.classes: dict[int, str] = {}
        self.namespace: dict[str, Any] | None = None
        figures = figures or {}
        self.formats = tuple(figures.get("formats") or DEFAULT_FORMATS)
        self.figure_kwargs = figures.get("kwargs", DEFAULT_FIGURE_KWARGS)

    # -- what the cell calls ---------------------------------------------------------------

    def display(self, *objs: Any, include: Any = None, exclude: Any = None,
                metadata: dict[str, Any] | None = None, display_id: Any = None,
                raw: bool = False, clear: bool = False, update: bool = False,
                **_: Any) -> Any:
        """Stands in for IPython's `display` (same arguments)."""
        if clear:
            self.clear_output(wait=True)
        if display_id is True:
            display_id = uuid.uuid4().hex
        for obj in objs:
            entry = self.entry(obj, raw=raw, metadata=metadata)
            if include or exclude:  # display_png(x) and the like: only those formats
                entry.update(include=sorted(include or []), exclude=sorted(exclude or []))
                if entry["kind"] == "bundle":
                    entry["data"] = {k: v for k, v in entry["data"].items()
                                     if (not include or k in include)
                                     and (not exclude or k not in exclude)}
            if display_id is not None:
                entry.update(display_id=display_id, update=update)
            self.emit(entry)
        if display_id is not None and not update:
            return _handle(self, display_id)
        return None

    def update_display(self, obj: Any, *, display_id: Any, **kwargs: Any) -> None:
        self.display(obj, display_id=display_id, update=True, **kwargs)

    def clear_output(self, wait: bool = False) -> None:
        self.emit({"kind": "clear", "wait": bool(wait)})

    def patch_ipython(self, functions: types.ModuleType) -> None:
        """IPython's own display functions record too, whoever imports them (the cell, or a
        function sent from an earlier cell); patched as soon as their module is loaded,
        before `IPython.display` copies the names."""
        replacements = {"display": self.display, "update_display": self.update_display,
                        "clear_output": self.clear_output}
        self.originals = {name: getattr(functions, name) for name in replacements}
        self._set(replacements)

    def unpatch(self) -> None:
        """The cell is over: IPython's functions are themselves again, so that a name bound to
        one of them pickles as a reference to IPython's, not as a copy of its code."""
        self._set(self.originals)

    def _set(self, functions: dict[str, Any]) -> None:
        for name in ("IPython.core.display_functions", "IPython.display"):
            module = sys.modules.get(name)
            if module is not None:
                for attribute, function in functions.items():
                    setattr(module, attribute, function)

    def ours(self, value: Any) -> bool:
        """Whether `value` is one of our stand-ins for IPython's display functions (the
        notebook's `display`, sent to the task, arrives as one)."""
        return getattr(value, "__self__", None) is self

    def __reduce__(self) -> Any:
        raise TypeError("the display recorder belongs to its task and does not travel")

    def original(self, value: Any) -> Any:
        """What the notebook should get for a name the cell bound to one of our stand-ins
        (`from IPython.display import display`): IPython's own function, or None."""
        return self.originals.get(getattr(value, "__name__", "")) if self.ours(value) else value

    # -- entries ---------------------------------------------------------------------------

    def entry(self, obj: Any, raw: bool = False,
              metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        if raw and isinstance(obj, dict):
            return {"kind": "bundle", "data": obj, "metadata": metadata or {}}
        if _is_figure(obj):
            return self.figure(obj)
        pickled = _pickle_unless_matplotlib(obj, self.namespace, self.classes)
        if pickled is None:
            return {"kind": "bundle", "data": _mimebundle(obj), "metadata": metadata or {}}
        return {"kind": "object", "data": pickled, "metadata": metadata or {}}

    def figure(self, fig: Any) -> dict[str, Any]:
        """A figure as the inline backend shows it: an empty one as text only."""
        data: dict[str, Any] = {"text/plain": repr(fig)}
        metadata: dict[str, Any] = {}
        if fig.axes or fig.lines:
            for fmt in self.formats:
                _render(fig, fmt, self.figure_kwargs, data, metadata)
        return {"kind": "bundle", "data": data, "metadata": metadata}

    def emit(self, entry: dict[str, Any]) -> None:
        """Stamp the entry with the output so far, keep it, and tell the kernel now."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream: its offset is what it is
                pass
        entry["out"], entry["err"] = _size(1), _size(2)
        entry["n"] = len(self.entries)
        self.entries.append(entry)
        if self.events is not None:
            with open(self.events, "ab") as events:
                events.write(_event_line(entry))

    def show_figures(self, at_end: bool = False) -> None:
        """Every open pyplot figure is shown, then closed: `plt.show()` and the end of the
        cell under the inline backend (`at_end`: the kernel shows those after the cell's
        value, as the inline backend does)."""
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        try:
            for number in plt.get_fignums():
                entry = self.figure(plt.figure(number))
                if at_end:
                    entry["at_end"] = True
                self.emit(entry)
        except Exception as exc:  # noqa: BLE001 - a broken figure must not lose the results
            print(f"remote_magic: could not render a figure: {exc}", file=sys.stderr)
        finally:
            plt.close("all")


def event_payload(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry as the events file holds it: JSON, the pickle in base64."""
    if entry.get("kind") == "object":
        return {**entry, "data": base64.b64encode(entry["data"]).decode("ascii")}
    return entry


def _event_line(entry: dict[str, Any]) -> bytes:
    try:
        line = json.dumps(event_payload(entry), separators=(",", ":"))
    except (TypeError, ValueError):
        line = ""
    if not line or len(line) > INLINE_EVENT:
        short = {k: v for k, v in entry.items() if k not in ("data", "metadata")}
        line = json.dumps({**short, "deferred": True}, separators=(",", ":"))
    return line.encode() + b"\n"


def _size(fd: int) -> int:
    try:
        return os.fstat(fd).st_size
    except OSError:
        return 0


def _handle(recorder: DisplayRecorder, display_id: str) -> Any:
    """What `display(..., display_id=...)` returns: IPython's handle when IPython is loaded
    (its methods call the patched functions), else a small one of ours."""
    functions = sys.modules.get("IPython.core.display_functions")
    if functions is not None:
        return functions.DisplayHandle(display_id)
    return _Handle(recorder, display_id)


class _Handle:
    """A display handle while IPython is not loaded here; in the kernel it becomes IPython's
    own, which updates that display there."""

    def __init__(self, recorder: DisplayRecorder, display_id: str) -> None:
        self.recorder, self.display_id = recorder, display_id

    def __reduce__(self) -> Any:
        return _ipython_handle, (self.display_id,)

    def __repr__(self) -> str:
        return f"<DisplayHandle display_id={self.display_id}>"

    def display(self, obj: Any, **kwargs: Any) -> None:
        self.recorder.display(obj, display_id=self.display_id, **kwargs)

    def update(self, obj: Any, **kwargs: Any) -> None:
        self.recorder.update_display(obj, display_id=self.display_id, **kwargs)


def _ipython_handle(display_id: str) -> Any:
    from IPython.core.display_functions import DisplayHandle

    return DisplayHandle(display_id)


class _RefusesMatplotlib(Exception):
    pass


_pickler: type | None = None


def _pickle_unless_matplotlib(obj: Any, namespace: dict[str, Any] | None,
                              classes: dict[int, str]) -> bytes | None:
    global _pickler
    if _pickler is None:
        base = pickler_class(with_refs=True)

        def persistent_id(self: Any, value: Any) -> Any:
            if type(value).__module__.startswith("matplotlib."):
                raise _RefusesMatplotlib
            return self.refs.get(id(value))

        _pickler = type("Pickler", (base,), {"persistent_id": persistent_id})
    buffer = io.BytesIO()
    pickler = _pickler(buffer, protocol=5)
    pickler.namespace, pickler.send_globals, pickler.refs = namespace, False, classes
    try:
        pickler.dump(obj)
    except Exception:  # noqa: BLE001 - unpicklable, or an artist inside: the bundle then
        return None
    return buffer.getvalue()


def _is_figure(obj: Any) -> bool:
    return type(obj).__module__.startswith("matplotlib.figure") and hasattr(obj, "savefig")


def _render(fig: Any, fmt: str, kwargs: dict[str, Any], data: dict[str, Any],
            metadata: dict[str, Any]) -> None:
    """One format of a figure, with the arguments IPython's inline backend uses."""
    retina = fmt in ("retina", "png2x")
    kind = "png" if retina else fmt
    options = {"format": kind, "facecolor": fig.get_facecolor(),
               "edgecolor": fig.get_edgecolor(), "bbox_inches": "tight",
               "dpi": fig.dpi * (2 if retina else 1), **kwargs}
    buffer = io.BytesIO()
    fig.canvas.print_figure(buffer, **options)
    raw = buffer.getvalue()
    if kind == "svg":
        data["image/svg+xml"] = raw.decode("utf-8")
        return
    mime = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg",
            "pdf": "application/pdf"}.get(kind)
    if mime is None:
        return
    data[mime] = base64.b64encode(raw).decode("ascii")
    if retina and raw[12:16] == b"IHDR":
        width, height = struct.unpack(">II", raw[16:24])
        metadata[mime] = {"width": width // 2, "height": height // 2}


def _mimebundle(obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = {}
    method = getattr(obj, "_repr_mimebundle_", None)
    if callable(method):
        try:
            got = method()
            data.update(got[0] if isinstance(got, tuple) else got or {})
        except Exception:  # noqa: BLE001
            pass
    for mime, name in _MIME_METHODS:
        method = getattr(obj, name, None)
        if mime in data or not callable(method):
            continue
        try:
            value = method()
        except Exception:  # noqa: BLE001
            continue
        if isinstance(value, tuple):
            value = value[0]
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode()
        if value is not None:
            data[mime] = value
    # A widget lives in the task's process, which no front end can talk to: show its text.
    data.pop("application/vnd.jupyter.widget-view+json", None)
    data.setdefault("text/plain", repr(obj))
    return data
