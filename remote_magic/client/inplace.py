"""Give a notebook object the new content a task gave its copy, keeping the object itself.

When a remote cell sorts a list, fits an estimator or fills an array column, the kernel's own
object must change, so that every other name bound to it sees the change, as it would have if
the cell had run here. Each kind of object is updated the way its type allows; what cannot be
updated in place is reported, and the caller rebinds the name instead.
"""

from __future__ import annotations

import copyreg
import sys
from typing import Any

__all__ = ["update_in_place"]


def update_in_place(old: Any, new: Any) -> bool:
    """Make `old` hold what `new` holds; False when its type does not allow it."""
    if old is new:
        return True
    if type(old) is not type(new):
        return False
    for update in (_class, _builtin_container, _numpy, _generator, _by_state):
        done = update(old, new)
        if done is not None:
            return done
    return _by_dict(old, new)


def _class(old: Any, new: Any) -> bool | None:
    """A class the cell changed (`Counter.total += 1`, a method replaced): its attributes,
    so that the notebook's instances keep being instances of it."""
    if not isinstance(old, type):
        return None
    fixed = ("__dict__", "__weakref__", "__doc__", "__module__", "__qualname__")
    try:
        for name in [n for n in vars(old) if n not in vars(new) and n not in fixed]:
            delattr(old, name)
        for name, value in vars(new).items():
            if name not in fixed and vars(old).get(name) is not value:
                setattr(old, name, value)
    except (AttributeError, TypeError):  # a built-in or extension type: read-only
        return False
    return True


def _builtin_container(old: Any, new: Any) -> bool | None:
    if isinstance(old, (list, bytearray)):
        old[:] = new
    elif isinstance(old, dict):
        old.clear()
        old.update(new)
        if hasattr(old, "default_factory"):
            old.default_factory = new.default_factory
    elif isinstance(old, set):
        old.clear()
        old.update(new)
    else:
        return None
    if hasattr(new, "__dict__"):  # a subclass with attributes of its own
        vars(old).clear()
        vars(old).update(vars(new))
    return True


def _numpy(old: Any, new: Any) -> bool | None:
    numpy = sys.modules.get("numpy")
    if numpy is None or not isinstance(old, numpy.ndarray):
        return None
    if old.shape != new.shape or old.dtype != new.dtype or not old.flags.writeable:
        return False
    old[...] = new
    return True


def _generator(old: Any, new: Any) -> bool | None:
    """NumPy's Generator keeps its state in its bit generator, which pickles by itself."""
    numpy = sys.modules.get("numpy")
    if numpy is None or not isinstance(old, numpy.random.Generator):
        return None
    old.bit_generator.state = new.bit_generator.state
    return True


def _by_state(old: Any, new: Any) -> bool | None:
    """Any object that pickles as "this class, plus a state": set the state on `old`.

    That is how pickle itself rebuilds such an object, so it covers plain classes, classes with
    __slots__, and those with their own __setstate__ (scikit-learn estimators, pandas objects,
    random.Random, NumPy's RandomState).
    """
    if isinstance(old, type) or not hasattr(old, "__reduce_ex__"):
        return None
    try:
        reduced = new.__reduce_ex__(4)
    except Exception:  # noqa: BLE001 - not reducible: cannot be updated this way
        return False
    if not isinstance(reduced, tuple) or len(reduced) < 3 or reduced[2] is None:
        return None  # no state of its own to set: see _by_dict
    rebuild, args, state = reduced[:3]
    rebuilt_as_is = (rebuild is copyreg.__newobj__ and args[:1] == (type(new),)) or \
        (rebuild is copyreg._reconstructor and args[:1] == (type(new),)) or \
        (rebuild is type(new) and not args) or hasattr(old, "__setstate__")
    if not rebuilt_as_is:
        return None
    saved = dict(vars(old)) if hasattr(old, "__dict__") else None
    try:
        if saved is not None:
            vars(old).clear()
        _set_state(old, state)
    except Exception:  # noqa: BLE001 - put the old attributes back, the caller rebinds
        if saved is not None:
            vars(old).clear()
            vars(old).update(saved)
        return False
    return True


def _by_dict(old: Any, new: Any) -> bool:
    """Last resort for an object whose pickle carries no separate state (a pandas Index is
    rebuilt from its constructor): its attributes are its state."""
    if isinstance(old, type) or not hasattr(old, "__dict__") or not hasattr(new, "__dict__"):
        return False
    try:
        vars(old).clear()
        vars(old).update(vars(new))
    except (AttributeError, TypeError):  # a read-only mapping proxy
        return False
    return True


def _set_state(obj: Any, state: Any) -> None:
    """What pickle's BUILD opcode does."""
    setstate = getattr(obj, "__setstate__", None)
    if setstate is not None and getattr(type(obj), "__setstate__", None) is not \
            getattr(object, "__setstate__", None):
        setstate(state)
        return
    slots = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slots = state
    if state:
        vars(obj).update(state)
    if slots:
        for name, value in slots.items():
            setattr(obj, name, value)
