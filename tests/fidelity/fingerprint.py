"""Fingerprints of a kernel's user names: a short hash and a readable line per name, computed
inside the kernel after each cell, so that two kernels' states can be compared cheaply.

The harness loads this file into every kernel under a private module name (no ``sys.path``
change, no user-visible name) and calls :func:`setup` once, then :func:`snapshot` after each
cell and :func:`explain` to find where two differing values part. Only the standard library
is imported here: numpy, pandas, scikit-learn, scipy and matplotlib are looked up in
``sys.modules``, so a snapshot never imports a library the notebook did not import, and it
never calls anything that draws from a random generator. Values are hashed, never pickled.

Normalisations (each is a way two kernels differ that a user cannot tell apart): memory
addresses (``0x`` and 6+ hex digits) and the kernel's own private directory (given to
:func:`setup`) are masked in every string and repr; the file name and line numbers of a
function's code are left out (IPython names cell files after the kernel's pid); set elements
are hashed in sorted order. A function is its code's bytecode, constants, names and flags.
Warnings raised while looking (numpy formatting a masked array) are silenced, not shown.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import reprlib
import sys
import time
import types
import warnings
from collections import deque
from typing import Any

#: names a kernel binds for its own use, never the notebook's
HIDDEN = frozenset({"In", "Out", "exit", "quit", "get_ipython"})
#: pseudo-names: the global random generators, and the identities between names (shared
#: mutable objects, instances of a notebook class that is no longer the one of that name)
RANDOM, NUMPY_RANDOM, ALIASES = "<random state>", "<numpy.random state>", "<aliases>"
ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
SCALARS = (type(None), bool, int, float, complex, str, bytes)
NODE_BUDGET = 200_000  # nodes hashed one by one per name; past it, parts count by type only
MAX_DEPTH = 12
EXPLAIN_CHILDREN = 10_000
SUMMARY_CHARS = 110

_state: dict[str, Any] = {"ns": None, "baseline": frozenset(), "masks": ()}


def setup(masks: list[list[str]] | tuple = (), ns: dict[str, Any] | None = None) -> str:
    """Remember the namespace, the names it holds before the first cell (they are not the
    notebook's) and the (text, replacement) pairs to mask; returns the first snapshot."""
    if ns is None:
        ns = sys.modules["IPython"].get_ipython().user_ns
    # longest first, so that a path inside another is masked by its own label
    ordered = sorted((tuple(m) for m in masks), key=lambda m: -len(m[0]))
    _state.update(ns=ns, baseline=frozenset(ns), masks=tuple(ordered))
    return snapshot()


def mask(text: str) -> str:
    for path, label in _state["masks"]:
        text = text.replace(path, label)
    return ADDRESS.sub("0x…", text)


def user_names(ns: dict[str, Any] | None = None) -> list[str]:
    ns = _state["ns"] if ns is None else ns
    return sorted(n for n in ns if not n.startswith("_") and n not in HIDDEN
                  and n not in _state["baseline"])


def quietly(function: Any) -> Any:
    """Warnings a library raises while the harness looks (numpy formatting a masked array,
    a deprecated estimator parameter) are not the notebook's output: silence them."""
    def run(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return function(*args, **kwargs)

    run.__doc__ = function.__doc__
    return run


@quietly
def snapshot() -> str:
    """JSON: {"names": {name: [hash, summary]}} for every user name and pseudo-name."""
    started = time.perf_counter()
    ns = _state["ns"]
    values = {name: ns[name] for name in user_names(ns)}
    fingerprinter = Fingerprinter()
    out = {name: list(fingerprinter.top(value)) for name, value in values.items()}
    for name, value in pseudo_values(values).items():
        digest, summary = fingerprinter.top(value)
        if name in (RANDOM, NUMPY_RANDOM) and not isinstance(value, NotImported):
            position = value[2] if name == NUMPY_RANDOM else value[1][-1]
            summary = f"state {digest[:8]} (position {position})"
        elif name == ALIASES or isinstance(value, NotImported):
            summary = repr(value)
        out[name] = [digest, summary]
    return json.dumps({"names": out, "seconds": time.perf_counter() - started})


def pseudo_values(values: dict[str, Any]) -> dict[str, Any]:
    """The global generators' states (reading them draws nothing) and the identities between
    names: which names share one mutable object, and which instances of a notebook class
    are not instances of the class that name now holds (isinstance would say False)."""
    rnd = sys.modules.get("random")
    nprandom = sys.modules.get("numpy.random")
    groups: dict[int, list[str]] = {}
    strangers = []
    for name, value in values.items():
        if _mutable(value):
            groups.setdefault(id(value), []).append(name)
        cls = type(value)
        holder = values.get(cls.__qualname__)
        if cls.__module__ == "__main__" and isinstance(holder, type) and holder is not cls:
            strangers.append(f"type({name}) is not {cls.__qualname__}")
    shared = [" is ".join(g) for g in groups.values() if len(g) > 1]
    return {
        RANDOM: rnd.getstate() if rnd is not None else NotImported("random"),
        NUMPY_RANDOM: (nprandom.get_state() if nprandom is not None
                       else NotImported("numpy.random")),
        ALIASES: Aliases(sorted(shared) + sorted(strangers)),
    }


class NotImported:
    """A generator module nobody imported yet: importing it would seed it from the OS, so it
    stands for a random state (a token drawn once per kernel, so L and C always differ
    here, and a cell that leaves it alone does not change it)."""

    tokens: dict[str, str] = {}

    def __init__(self, module: str) -> None:
        self.module = module
        self.token = NotImported.tokens.setdefault(module, os.urandom(8).hex())

    def __repr__(self) -> str:
        return f"{self.module} not imported"


class Aliases(list):
    """Groups of names bound to one mutable object (an in-place change shows through all)."""

    def __repr__(self) -> str:
        return "; ".join(self) or "no shared objects"


def _mutable(value: Any) -> bool:
    if isinstance(value, (list, dict, set, bytearray)):
        return True
    if isinstance(value, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
                          types.MethodType)) or isinstance(value, SCALARS):
        return False
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        return True
    return hasattr(value, "__dict__")


@quietly
def explain(name: str, path: list[str]) -> str:
    """JSON for the part of `name` reached by following child keys `path`: its hash and
    summary and those of its children, so the harness can walk two kernels' values down to
    the first place they differ."""
    values = {n: _state["ns"][n] for n in user_names()}
    values.update(pseudo_values(values))
    fingerprinter = Fingerprinter()
    obj = values[name]
    for key in path:
        parts = dict(fingerprinter.explain_children(obj))
        if key not in parts:
            return json.dumps({"missing": key})
        obj = parts[key]
    digest, summary = fingerprinter.top(obj)
    children = fingerprinter.explain_children(obj)
    shown = [[key, *fingerprinter.top(child)] for key, child in children[:EXPLAIN_CHILDREN]]
    return json.dumps({"hash": digest, "summary": summary, "children": shown,
                       "more": max(0, len(children) - EXPLAIN_CHILDREN)})


def _h(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxtuple = 48, 48, 6, 6
_short.maxdict, _short.maxset, _short.maxlevel = 4, 6, 3


def _clip(text: str, limit: int = SUMMARY_CHARS) -> str:
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _safe_repr(obj: Any, short: bool = False) -> str:
    try:
        return mask(_short.repr(obj) if short else repr(obj))
    except Exception as error:  # a broken __repr__ is part of the value, not a harness error
        return f"<repr failed: {type(error).__name__}>"


class Fingerprinter:
    """Hashes values recursively with a node budget, cycle guard and per-object memo."""

    def __init__(self) -> None:
        self.memo: dict[int, tuple[Any, tuple[str, str]]] = {}  # keeps temporaries alive
        self.active: set[int] = set()
        self.budget = NODE_BUDGET

    def top(self, obj: Any) -> tuple[str, str]:
        self.budget = NODE_BUDGET
        return self.fp(obj, 0)

    def fp(self, obj: Any, depth: int) -> tuple[str, str]:
        """(hash, summary) of one value."""
        if type(obj) in SCALARS:
            return self._scalar(obj)
        key = id(obj)
        if key in self.memo:
            return self.memo[key][1]
        if key in self.active:
            return _h("cycle", _qualname(type(obj))), f"<cycle: {type(obj).__name__}>"
        self.budget -= 1
        if self.budget < 0 or depth > MAX_DEPTH:
            return _h("cut", _qualname(type(obj))), f"{type(obj).__name__} (not followed)"
        self.active.add(key)
        try:
            header, children, summary = self.parts(obj)
            if children is None:
                digest = _h(header)
            else:
                digest = _h(header, *(k + "=" + self.fp(v, depth + 1)[0] for k, v in children))
        except Exception as error:  # an object that breaks while read: describe, go on
            digest, summary = _h("broken", _qualname(type(obj)), type(error).__name__), \
                f"{type(obj).__name__} (unreadable: {type(error).__name__})"
        finally:
            self.active.discard(key)
        result = (digest, _clip(summary))
        self.memo[key] = (obj, result)
        return result

    def _scalar(self, obj: Any) -> tuple[str, str]:
        if isinstance(obj, str):
            text = mask(obj)
            return _h("str", text), _clip(_short.repr(text))
        if isinstance(obj, bytes):
            return _h("bytes", obj), _clip(_short.repr(obj))
        return _h(type(obj).__name__, repr(obj)), _clip(repr(obj))

    # -- what a value is made of ---------------------------------------------------------

    def parts(self, obj: Any) -> tuple[str, list[tuple[str, Any]] | None, str]:
        """(header, children, summary): the value's own identity text, the parts whose
        fingerprints complete it (None: the header says it all), a readable line."""
        cls = type(obj)
        name = cls.__name__
        for special in (self._numpy, self._pandas, self._sklearn, self._scipy):
            got = special(obj)
            if got is not None:
                return got
        if isinstance(obj, NotImported):
            return f"not imported {obj.module} {obj.token}", None, repr(obj)
        if cls.__module__.startswith(("matplotlib", "mpl_toolkits")):
            return f"matplotlib {_qualname(cls)}", None, f"{name} (matplotlib: type only)"
        if isinstance(obj, types.ModuleType):
            return f"module {obj.__name__}", None, f"module {obj.__name__}"
        if isinstance(obj, (list, tuple, deque)):
            return self._sequence(obj)
        if isinstance(obj, dict):
            extra = ""
            if getattr(obj, "default_factory", None) is not None:
                extra = self.fp(obj.default_factory, 1)[0]
            keys = _h(*(self.fp(k, 1)[0] for k in obj))
            return (f"{_qualname(cls)} {extra} {keys}", self._dict_children(obj),
                    f"{name} {_safe_repr(obj, short=True)}")
        if isinstance(obj, (set, frozenset)):
            hashes = sorted(self.fp(v, 1)[0] for v in obj)
            return f"{_qualname(cls)} " + " ".join(hashes), None, \
                f"{name} {_safe_repr(obj, short=True)}"
        if isinstance(obj, bytearray):
            return f"bytearray {_h(bytes(obj))}", None, f"bytearray {_safe_repr(obj, True)}"
        if isinstance(obj, types.FunctionType):
            return self._function(obj)
        if isinstance(obj, types.CodeType):
            # what the code does, not where it was compiled: no file name, no line numbers
            # (IPython names a cell's file after the kernel's pid)
            return f"code {obj.co_name}", [(f".{attr}", getattr(obj, attr)) for attr in (
                "co_flags", "co_consts", "co_names", "co_varnames", "co_freevars",
                "co_cellvars", "co_code", "co_argcount", "co_posonlyargcount",
                "co_kwonlyargcount")], f"code {obj.co_name}"
        if isinstance(obj, types.MethodType):
            return (f"method of {_qualname(type(obj.__self__))}", [("__func__", obj.__func__)],
                    f"method {obj.__func__.__qualname__} of {type(obj.__self__).__name__}")
        if isinstance(obj, type):
            return self._class(obj)
        random_state = self._random(obj)
        if random_state is not None:
            return random_state
        if cls.__repr__ is object.__repr__ and self._users_class(cls) and (
                hasattr(obj, "__dict__") or hasattr(cls, "__slots__")):
            attributes = self._attributes(obj)
            shown = {k: v for k, v in attributes[:4]}
            return _qualname(cls), attributes, f"{name} object {_safe_repr(shown, short=True)}"
        text = _safe_repr(obj)
        return f"{_qualname(cls)} {text}", None, text

    def _sequence(self, obj: Any) -> tuple[str, list | None, str]:
        cls = type(obj)
        header = f"{_qualname(cls)} len={len(obj)}"
        if isinstance(obj, deque):
            header += f" maxlen={obj.maxlen}"
        summary = f"{cls.__name__} {_safe_repr(obj, short=True)}"
        if len(obj) > 64 and all(type(v) in SCALARS for v in obj):
            # a long list of plain numbers or strings: one repr beats 10^5 nodes
            return header + " " + _h(mask(repr(list(obj)))), None, summary
        return header, [(f"[{i}]", v) for i, v in enumerate(obj)], summary

    def _dict_children(self, obj: dict) -> list[tuple[str, Any]]:
        children, seen = [], set()
        for k, v in obj.items():
            label = f"[{_safe_repr(k, short=True)}]"
            while label in seen:  # two keys with one repr: keep both apart
                label += "'"
            seen.add(label)
            children.append((label, v))
        return children

    def _function(self, fn: types.FunctionType) -> tuple[str, list, str]:
        ns = _state["ns"]
        home = "notebook" if ns is not None and fn.__globals__ is ns else "other"
        header = f"function {fn.__module__}.{fn.__qualname__} globals={home}"
        children: list[tuple[str, Any]] = [("__code__", fn.__code__),
                                           ("__defaults__", fn.__defaults__),
                                           ("__kwdefaults__", fn.__kwdefaults__)]
        for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            try:
                children.append((f"closure.{var}", cell.cell_contents))
            except ValueError:  # an empty cell
                children.append((f"closure.{var}", None))
        return header, children, f"function {fn.__qualname__} (globals: {home})"

    def _class(self, cls: type) -> tuple[str, list | None, str]:
        bases = ",".join(_qualname(b) for b in cls.__bases__)
        header = f"class {_qualname(cls)}({bases})"
        if not self._users_class(cls):
            return header, None, f"class {cls.__qualname__}"
        # bookkeeping, not behaviour: __slotnames__ is copyreg's cache, left by pickling
        skip = {"__dict__", "__weakref__", "__module__", "__doc__", "__qualname__",
                "__firstlineno__", "__static_attributes__", "__slotnames__"}
        children = [(f".{k}", v) for k, v in sorted(vars(cls).items()) if k not in skip]
        return header, children, f"class {cls.__qualname__}"

    def _users_class(self, cls: type) -> bool:
        """Defined by the notebook (or a file beside it): its instances' attributes are the
        notebook's data; a library's private caches are not."""
        if cls.__module__ == "__main__":
            return True
        module = sys.modules.get(cls.__module__)
        path = getattr(module, "__file__", None) or ""
        return any(path.startswith(p) for p, _ in _state["masks"])

    def _attributes(self, obj: Any) -> list[tuple[str, Any]]:
        found = dict(getattr(obj, "__dict__", {}))
        for klass in type(obj).__mro__:
            for slot in getattr(klass, "__slots__", ()):
                if slot not in found and hasattr(obj, slot) and not slot.startswith("__"):
                    found[slot] = getattr(obj, slot)
        return [(f".{k}", v) for k, v in sorted(found.items())]

    def _random(self, obj: Any) -> tuple[str, list, str] | None:
        rnd = sys.modules.get("random")
        if rnd is not None and isinstance(obj, rnd.Random) and not isinstance(
                obj, rnd.SystemRandom):
            return _qualname(type(obj)), [("state", obj.getstate())], \
                f"{type(obj).__name__} (state {_h(repr(obj.getstate()))[:8]})"
        return None

    # -- libraries, only if the notebook imported them ------------------------------------

    def _numpy(self, obj: Any) -> tuple[str, list | None, str] | None:
        np = sys.modules.get("numpy")
        if np is None:
            return None
        if isinstance(obj, np.ndarray):
            head = f"{_qualname(type(obj))} {obj.dtype.str} {obj.dtype!r} {obj.shape}"
            summary = (f"{type(obj).__name__} {obj.dtype} {obj.shape} "
                       + mask(np.array2string(obj, threshold=8, edgeitems=2,
                                              max_line_width=SUMMARY_CHARS)))
            ma = sys.modules.get("numpy.ma")
            if ma is not None and isinstance(obj, ma.MaskedArray):
                head += " mask=" + _h(np.ascontiguousarray(ma.getmaskarray(obj)).tobytes())
            if obj.dtype.hasobject:
                return head, [(f"[{i}]", v) for i, v in enumerate(obj.ravel(order="C"))], \
                    summary
            return f"{head} {_h(np.ascontiguousarray(obj).tobytes())}", None, summary
        if isinstance(obj, np.generic):
            return f"numpy {obj.dtype.str} {_h(obj.tobytes())}", None, _safe_repr(obj)
        nprandom = sys.modules.get("numpy.random")
        if nprandom is not None and isinstance(obj, nprandom.Generator):
            state = obj.bit_generator.state
            return f"Generator {type(obj.bit_generator).__name__}", [("state", state)], \
                f"Generator (state {self.fp(state, 1)[0][:8]})"
        if nprandom is not None and isinstance(obj, nprandom.RandomState):
            state = obj.get_state()
            return "RandomState", [("state", state)], \
                f"RandomState (state {self.fp(state, 1)[0][:8]})"
        if isinstance(obj, np.dtype):
            return f"dtype {obj.str} {obj!r}", None, repr(obj)
        return None

    def _pandas(self, obj: Any) -> tuple[str, list | None, str] | None:
        pd = sys.modules.get("pandas")
        if pd is None or not isinstance(obj, (pd.DataFrame, pd.Series, pd.Index)):
            return None
        kind = type(obj).__name__
        if isinstance(obj, pd.Index):
            head = f"{_qualname(type(obj))} {obj.dtype!r} names={obj.names!r}"
            names = "" if all(n is None for n in obj.names) else f" names={list(obj.names)!r}"
            return head + " " + _pandas_hash(pd, obj), None, \
                f"{kind} {len(obj)}{names} {_safe_repr(list(obj[:6]), short=True)}"
        index = self.fp(obj.index, 1)[0]
        if isinstance(obj, pd.Series):
            head = f"{_qualname(type(obj))} {obj.dtype!r} name={_safe_repr(obj.name)} {index}"
            summary = f"{kind} {_safe_repr(obj.name)} {obj.dtype} len={len(obj)} " \
                      f"{_safe_repr(obj.iloc[:4].tolist(), short=True)}"
            try:
                return head + " " + _pandas_hash(pd, obj, index=False), None, summary
            except Exception:  # unhashable values (lists, dicts): value by value
                return head, [("values", obj.tolist())], summary
        columns = self.fp(obj.columns, 1)[0]
        head = f"{_qualname(type(obj))} {list(map(repr, obj.dtypes))} {index} {columns}"
        try:
            content = _pandas_hash(pd, obj, index=False)
            children = None
        except Exception:  # unhashable cells (lists, dicts): column by column, value by value
            content, children = "", [(f"[{c!r}]", obj.iloc[:, i].tolist())
                                     for i, c in enumerate(obj.columns)]
        return head + " " + content, children, \
            f"{kind} {obj.shape} columns {_safe_repr(list(obj.columns), short=True)}"

    def _sklearn(self, obj: Any) -> tuple[str, list, str] | None:
        base = sys.modules.get("sklearn.base")
        if base is None or not isinstance(obj, base.BaseEstimator) or isinstance(obj, type):
            return None
        params = obj.get_params(deep=False)
        fitted = sorted(k for k in vars(obj) if k.endswith("_") and not k.startswith("_"))
        children = [(f"param.{k}", v) for k, v in sorted(params.items())]
        children += [(f".{k}", getattr(obj, k)) for k in fitted]
        state = f"fitted: {', '.join(fitted)}" if fitted else "not fitted"
        return _qualname(type(obj)), children, f"{type(obj).__name__} ({_clip(state, 60)})"

    def _scipy(self, obj: Any) -> tuple[str, None, str] | None:
        sparse = sys.modules.get("scipy.sparse")
        if sparse is None or not sparse.issparse(obj):
            return None
        csr = obj.tocsr()
        head = f"{_qualname(type(obj))} {obj.shape} {obj.dtype.str}"
        data = _h(csr.data.tobytes(), csr.indices.tobytes(), csr.indptr.tobytes())
        return f"{head} {data}", None, f"{type(obj).__name__} {obj.shape} nnz={obj.nnz}"

    # -- explanation: the parts a person can look at ---------------------------------------

    def explain_children(self, obj: Any) -> list[tuple[str, Any]]:
        pd = sys.modules.get("pandas")
        np = sys.modules.get("numpy")
        if pd is not None and isinstance(obj, pd.DataFrame):
            return [("index", obj.index), ("columns", obj.columns)] + [
                (f"[{c!r}]", obj.iloc[:, i]) for i, c in enumerate(obj.columns)]
        if pd is not None and isinstance(obj, pd.Series):
            return [("index", obj.index)] + [
                (f"[{label!r}]", v) for label, v in
                zip(obj.index[:EXPLAIN_CHILDREN], obj.iloc[:EXPLAIN_CHILDREN].tolist())]
        if pd is not None and isinstance(obj, pd.Index):
            return [(f"[{i}]", v) for i, v in enumerate(obj[:EXPLAIN_CHILDREN].tolist())]
        if np is not None and isinstance(obj, np.ndarray) and obj.ndim > 0:
            return [(f"[{i}]", obj[i]) for i in range(min(len(obj), EXPLAIN_CHILDREN))]
        if type(obj) in SCALARS:
            return []
        try:
            _, children, _ = self.parts(obj)
        except Exception:
            return []
        if children is None and isinstance(obj, (list, tuple, deque)):
            return [(f"[{i}]", v) for i, v in enumerate(obj)]
        if children is None and isinstance(obj, (set, frozenset)):
            return sorted(((self.fp(v, 1)[1], v) for v in obj), key=lambda kv: kv[0])
        return children or []


def _pandas_hash(pd: Any, obj: Any, index: bool = True) -> str:
    hashed = pd.util.hash_pandas_object(obj, index=index) if not isinstance(obj, pd.Index) \
        else pd.util.hash_pandas_object(obj)
    return _h(hashed.to_numpy().tobytes())
