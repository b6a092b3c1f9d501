"""State a cell depends on and changes that lives in modules, not in the notebook's variables.

A seeded global random generator, a matplotlib style, pandas display options, scikit-learn's
`set_config`: locally, one
cell sets them and the next cells run under them. So the kernel sends these settings with a
task, the task runs under them (each is put in place when the task imports its module), and
the settings the task changed come back and are put in place in the kernel, as if the cell had
run there. Only modules already imported count on either side: nothing here imports numpy,
pandas or matplotlib.

A setting's state is plain picklable data; `restore` makes the module's state exactly that.
NumPy print options and matplotlib's rcParams, whose defaults are fixed, are left out (None)
while at their defaults, so that a task's identity does not change merely because the kernel
has imported the module since.
"""

from __future__ import annotations

import pickle
import sys
import types
import warnings
from collections.abc import Mapping
from typing import Any, Callable

__all__ = ["capture", "Tracker"]


class _Setting:
    module = ""

    def capture(self, module: types.ModuleType) -> Any:
        raise NotImplementedError

    def restore(self, module: types.ModuleType, state: Any) -> None:
        raise NotImplementedError


class _Random(_Setting):
    """The `random` module's global generator."""

    module = "random"

    def capture(self, module: types.ModuleType) -> Any:
        return module.getstate()

    def restore(self, module: types.ModuleType, state: Any) -> None:
        module.setstate(state)


class _NumpyRandom(_Setting):
    """NumPy's legacy global generator (np.random.seed, np.random.rand, ...)."""

    module = "numpy.random"

    def capture(self, module: types.ModuleType) -> Any:
        return module.get_state()

    def restore(self, module: types.ModuleType, state: Any) -> None:
        module.set_state(state)


class _NumpyPrint(_Setting):
    """How NumPy prints arrays (np.set_printoptions): the options not at their defaults."""

    module = "numpy"
    defaults = {"edgeitems": 3, "threshold": 1000, "floatmode": "maxprec", "precision": 8,
                "suppress": False, "linewidth": 75, "nanstr": "nan", "infstr": "inf",
                "sign": "-", "formatter": None, "legacy": False}

    def capture(self, module: types.ModuleType) -> Any:
        options = module.get_printoptions()
        return {k: v for k, v in options.items() if k in self.defaults and
                _differs(v, self.defaults[k])} or None

    def restore(self, module: types.ModuleType, state: Any) -> None:
        module.set_printoptions(**{**self.defaults, **(state or {})})


class _Matplotlib(_Setting):
    """Styles and rcParams: the values that differ from matplotlib's defaults."""

    module = "matplotlib"
    skip = frozenset({"backend", "backend_fallback", "interactive"})

    def capture(self, module: types.ModuleType) -> Any:
        defaults = module.rcParamsDefault
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: v for k, v in module.rcParams.items()
                    if k not in self.skip and (k not in defaults or _differs(v, defaults[k]))
                    } or None

    def restore(self, module: types.ModuleType, state: Any) -> None:
        state = state or {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            now = self.capture(module) or {}
            module.rcParams.update({k: module.rcParamsDefault[k] for k in now
                                    if k not in state and k in module.rcParamsDefault})
            module.rcParams.update(state)


class _Pandas(_Setting):
    """pandas options (pd.set_option), all of them: some defaults depend on the process
    (display.max_columns is 0 where pandas thinks it writes to a terminal, as a task does,
    and 20 in a notebook), so only the whole set makes a task print as the notebook does."""

    module = "pandas"

    def capture(self, module: types.ModuleType) -> Any:
        options = module._config.config._registered_options
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: module.get_option(k) for k in options}

    def restore(self, module: types.ModuleType, state: Any) -> None:
        options = module._config.config._registered_options
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for key, value in (state or {}).items():
                if key in options and _differs(module.get_option(key), value):
                    module.set_option(key, value)


class _Sklearn(_Setting):
    """scikit-learn's configuration (sklearn.set_config), all of it (environment variables
    may set its defaults)."""

    module = "sklearn"

    def capture(self, module: types.ModuleType) -> Any:
        return module.get_config()

    def restore(self, module: types.ModuleType, state: Any) -> None:
        known = module.get_config()
        module.set_config(**{k: v for k, v in (state or {}).items() if k in known})


def _differs(a: Any, b: Any) -> bool:
    try:
        return bool(a != b)
    except Exception:  # noqa: BLE001 - arrays and the like: compare what they pickle to
        return _pickled(a) != _pickled(b)


def _pickled(state: Any) -> bytes | None:
    try:
        return pickle.dumps(state, protocol=4)
    except Exception:  # noqa: BLE001 - an unpicklable setting is never sent
        return None


SETTINGS: dict[str, _Setting] = {s.module + ":" + type(s).__name__: s for s in (
    _Random(), _NumpyRandom(), _NumpyPrint(), _Matplotlib(), _Pandas(), _Sklearn())}


def capture() -> dict[str, Any]:
    """The settings of every module this process has imported (kernel side, per cell)."""
    states = {}
    for key, setting in SETTINGS.items():
        module = sys.modules.get(setting.module)
        if module is None:
            continue
        try:
            state = setting.capture(module)
        except Exception:  # noqa: BLE001 - a version whose internals differ: leave it out
            continue
        if state is not None:
            states[key] = state
    return states


def restore(states: Mapping[str, Any]) -> list[str]:
    """Put the settings in place in this process, for modules it has imported (the kernel,
    after a task); returns the keys that could not be."""
    failed = []
    for key, state in states.items():
        setting = SETTINGS.get(key)
        module = sys.modules.get(setting.module) if setting else None
        if setting is None or module is None:
            continue
        try:
            setting.restore(module, state)
        except Exception:  # noqa: BLE001 - a value this version refuses: say so, go on
            failed.append(key)
    return failed


class Tracker:
    """The runner's side: the kernel's settings go in place as their modules are imported;
    afterwards, the ones the task changed are reported."""

    def __init__(self, states: Mapping[str, Any],
                 when_imported: Callable[[str, Callable[[types.ModuleType], None]], None]) -> None:
        self.sent = dict(states)
        self.baseline: dict[str, bytes | None] = {}
        for key, setting in SETTINGS.items():
            when_imported(setting.module, lambda module, key=key: self._arrived(key, module))

    def _arrived(self, key: str, module: types.ModuleType) -> None:
        setting = SETTINGS[key]
        try:
            if key in self.sent:
                setting.restore(module, self.sent[key])
            self.baseline[key] = _pickled(setting.capture(module))
        except Exception as exc:  # noqa: BLE001 - run on under this module's defaults
            print(f"remote_magic: the notebook's {setting.module} settings could not be "
                  f"applied here: {exc}", file=sys.stderr)

    def changed(self) -> dict[str, Any]:
        """Settings that differ from what the task started with."""
        changed = {}
        for key, before in self.baseline.items():
            setting = SETTINGS[key]
            try:
                now = setting.capture(sys.modules[setting.module])
            except Exception:  # noqa: BLE001
                continue
            if _pickled(now) != before:
                changed[key] = now
        return changed
