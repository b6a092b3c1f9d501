"""The pickler and unpickler that keep a cell's objects tied to the namespace they live in.

Plain cloudpickle copies everything, which breaks two things a notebook user relies on:

* A function keeps looking up globals in the namespace where it lives. cloudpickle gives a
  function rebuilt elsewhere a private globals dict holding copies of what it referenced, so a
  function defined by a remote cell would, back in the kernel, never see a global the notebook
  rebinds later. Here a function whose globals are *the* namespace being sent (the notebook's
  on the way out, the task's on the way back) is rebuilt with the receiving namespace as its
  globals: the task's namespace on the host, the notebook's own in the kernel.
* Identity. An object the task received from the notebook and hands back inside a result (an
  estimator kept by a pipeline, a list put in a dict) must come back as the kernel's own
  object, not a copy of it. The runner's pickler writes such an object as a reference by name
  (pickle's persistent id), and the kernel's unpickler resolves the name to the object it sent.

Imported on both sides; cloudpickle is imported only by whoever pickles.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import threading
import types
from collections import ChainMap
from collections.abc import Mapping
from typing import Any

_PLACEHOLDER_FILE = "<dynamic-code>"
_classes: dict[bool, type] = {}
_receiving = threading.local()


class _NamespaceRef:
    """Stands for "the namespace of whoever loads this" in a pickled function."""

    def __reduce__(self) -> Any:
        return receiving_namespace, ()


NAMESPACE = _NamespaceRef()


def receiving_namespace() -> dict[str, Any]:
    """Called while unpickling: the globals a namespace-bound function is rebuilt with."""
    namespace = getattr(_receiving, "namespace", None)
    if namespace is None:  # nobody said where: one fresh dict for everything in this load
        namespace = _receiving.namespace = {}
    return namespace


def pickler_class(with_refs: bool = False) -> type:
    """cloudpickle's Pickler with three changes (the class is built once, on first use).

    - A code object keeps the name of its source file. Since 3.1.3 cloudpickle replaces it with
      a placeholder; a traceback through a function sent by value (the executor's `fn`, a
      helper from the user's own module) would then name neither file nor line.
    - Functions whose globals are `self.namespace` are rebuilt in the receiving namespace;
      with `self.send_globals` false the values they reference are left out, since the
      receiver holds the right ones already.
    - With `with_refs`, objects listed in `self.refs` (id -> name) are written as references
      to the receiver's object of that name, except `self.top` (the value of an in-place
      entry, whose content is what has to travel).
    """
    cls = _classes.get(with_refs)
    if cls is not None:
        return cls
    import cloudpickle

    base = cloudpickle.Pickler
    table: Any = base.dispatch_table
    reduce_code_base = base.dispatch_table.get(types.CodeType)
    if reduce_code_base is not None:
        def reduce_code(code: types.CodeType) -> Any:
            rebuild, args = reduce_code_base(code)
            return rebuild, tuple(
                code.co_filename if isinstance(a, str) and a == _PLACEHOLDER_FILE else a
                for a in args)

        table = ChainMap({types.CodeType: reduce_code}, base.dispatch_table)

    def _dynamic_function_reduce(self: Any, func: types.FunctionType) -> Any:
        reduced = base._dynamic_function_reduce(self, func)
        if self.namespace is None or func.__globals__ is not self.namespace:
            return reduced
        make, (code, _, name, argdefs, closure), (state, slots), *rest = reduced
        if not self.send_globals:
            slots = {**slots, "__globals__": {}}
        return (make, (code, NAMESPACE, name, argdefs, closure), (state, slots), *rest)

    def reducer_override(self: Any, obj: Any) -> Any:
        reduced = _reopened(obj)
        return reduced if reduced is not None else base.reducer_override(self, obj)

    attributes: dict[str, Any] = {
        "dispatch_table": table, "_dynamic_function_reduce": _dynamic_function_reduce,
        "reducer_override": reducer_override,
        "namespace": None, "send_globals": True, "refs": {}, "top": None,
    }
    if with_refs:
        def persistent_id(self: Any, obj: Any) -> Any:
            if obj is self.top:
                return None
            return self.refs.get(id(obj))

        attributes["persistent_id"] = persistent_id
    cls = _classes[with_refs] = type("Pickler", (base,), attributes)
    return cls


def _reopened(obj: Any) -> Any:
    """Objects that plain pickling refuses but that a notebook keeps from cell to cell, as
    the recipe to make them again:

    - np.load of an .npz holds an open file: it travels as "open this file again", by the
      name it was opened with (relative names work: the cell runs where the notebook runs,
      or in a folder where the files it names were staged);
    - a @contextmanager used as a decorator (`@mpl.rc_context({...})`) holds a generator
      that has not started: it travels as the function and arguments that make it.
    """
    kind = type(obj)
    if kind.__name__ == "NpzFile" and kind.__module__.startswith("numpy."):
        name = getattr(getattr(obj, "fid", None), "name", None)
        if isinstance(name, str):
            return _load_npz, (name, bool(getattr(obj, "allow_pickle", False)))
    elif isinstance(obj, contextlib._GeneratorContextManager) and hasattr(obj, "func") and \
            _not_started(getattr(obj, "gen", None)):
        # By the decorated function of its module when there is one: the bare generator
        # function is not reachable by name, and a copy of it would work on copies of its
        # module's globals (matplotlib's rcParams).
        module = sys.modules.get(getattr(obj.func, "__module__", None) or "")
        helper = getattr(module, getattr(obj.func, "__qualname__", ""), None)
        if getattr(helper, "__wrapped__", None) is obj.func:
            return _call, (helper, obj.args, obj.kwds)
        return kind, (obj.func, obj.args, obj.kwds)
    return None


def _call(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return function(*args, **kwargs)


def _not_started(generator: Any) -> bool:
    frame = getattr(generator, "gi_frame", None)
    if frame is None or generator.gi_running:
        return False
    suspended = getattr(generator, "gi_suspended", None)  # Python 3.11+
    return not suspended if suspended is not None else frame.f_lasti < 0


def _load_npz(name: str, allow_pickle: bool) -> Any:
    import numpy

    return numpy.load(name, allow_pickle=allow_pickle)


def make_pickler(file: Any, buffer_callback: Any, *, namespace: dict[str, Any] | None = None,
                 send_globals: bool = True, refs: Mapping[int, str] | None = None) -> Any:
    pickler = pickler_class(with_refs=bool(refs))(file, protocol=5,
                                                  buffer_callback=buffer_callback)
    pickler.namespace, pickler.send_globals = namespace, send_globals
    if refs:
        pickler.refs = refs
    return pickler


class Unpickler(pickle.Unpickler):
    """Resolves the runner's references by name to the objects the kernel sent."""

    def __init__(self, file: Any, *, buffers: Any, refs: Mapping[str, Any] | None) -> None:
        super().__init__(file, buffers=buffers)
        self.refs = refs if refs is not None else {}  # a lazy mapping may be empty so far

    def persistent_load(self, pid: Any) -> Any:
        try:
            return self.refs[pid]
        except (KeyError, TypeError):
            raise pickle.UnpicklingError(
                f"the data refers to the notebook's variable {pid!r} as it was sent to the "
                "task, and that object is not known here") from None


def loads(data: bytes, *, namespace: dict[str, Any] | None = None,
          refs: Mapping[str, Any] | None = None) -> Any:
    """One pickle made by our pickler (a displayed object), loaded as `load_namespace` loads
    values: functions into `namespace`, references resolved in `refs`."""
    import io

    with receiving_into(namespace):
        return Unpickler(io.BytesIO(data), buffers=None, refs=refs).load()


class receiving_into:
    """While loading: namespace-bound functions get `namespace` as their globals.

    cloudpickle also sets '__builtins__' in a rebuilt function's globals (to its own module's
    builtins dict); the namespace keeps the one it had.
    """

    def __init__(self, namespace: dict[str, Any] | None) -> None:
        self.namespace = namespace
        self.builtins: Any = None

    def __enter__(self) -> None:
        _receiving.namespace = self.namespace
        if self.namespace is not None:
            self.builtins = self.namespace.get("__builtins__", _receiving)

    def __exit__(self, *exc: Any) -> None:
        if self.namespace is not None:
            if self.builtins is _receiving:
                self.namespace.pop("__builtins__", None)
            else:
                self.namespace["__builtins__"] = self.builtins
        _receiving.namespace = None
