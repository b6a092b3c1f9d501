"""State a cell depends on and changes that lives in modules, not in the notebook's variables.

A seeded global random generator, a matplotlib style, pandas display options, scikit-learn's
`set_config`: locally, one cell sets them and the next cells run under them. So the kernel
sends these settings with a task, the task runs under them (each is put in place when the
task imports its module), and what the task changed comes back and is applied in the kernel,
as if the cell had run there. Only modules already imported count on either side: nothing
here imports numpy, pandas or matplotlib.

Two kinds of settings: a generator's state is one value, sent and brought back whole; an
options mapping is sent whole (some defaults differ between a notebook and a task: pandas
prints for a terminal there) but only the options the task changed come back, so that a
task's own defaults never leak into the notebook. NumPy print options and matplotlib's
rcParams, whose defaults are fixed, are left out while at their defaults, so that a task's
identity does not change merely because the kernel has imported the module since.
"""

from __future__ import annotations

import pickle
import sys
import types
import warnings
from collections.abc import Mapping
from typing import Any, Callable

import cloudpickle

__all__ = ["Tracker", "apply_changes", "capture"]


class _Setting:
    """One module's state as a single value (a random generator's)."""

    module = ""

    def capture(self, module: types.ModuleType) -> Any:
        raise NotImplementedError

    def restore(self, module: types.ModuleType, state: Any) -> None:
        raise NotImplementedError

    def changes(self, module: types.ModuleType, before: Any, now: Any) -> Any:
        return now

    def apply(self, module: types.ModuleType, changes: Any) -> None:
        self.restore(module, changes)


class _Options(_Setting):
    """A mapping of options; `capture` may leave out options at their `default`."""

    def default(self, module: types.ModuleType, key: str) -> Any:
        raise NotImplementedError

    def set(self, module: types.ModuleType, values: dict[str, Any]) -> None:
        raise NotImplementedError

    def restore(self, module: types.ModuleType, state: Any) -> None:
        """Make the options exactly `state` (options left out: their defaults)."""
        state = state or {}
        now = self.capture(module) or {}
        self.set(module, {**{k: self.default(module, k) for k in now if k not in state},
                          **{k: v for k, v in state.items() if _differs(now.get(k, _NONE), v)}})

    def changes(self, module: types.ModuleType, before: Any, now: Any) -> Any:
        before, now = before or {}, now or {}
        changed = {k: v for k, v in now.items() if _differs(before.get(k, _NONE), v)}
        changed.update({k: self.default(module, k) for k in before if k not in now})
        return changed

    def apply(self, module: types.ModuleType, changes: Any) -> None:
        self.set(module, dict(changes or {}))


_NONE = object()


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


class _NumpyPrint(_Options):
    """How NumPy prints arrays (np.set_printoptions): the options not at their defaults."""

    module = "numpy"
    defaults = {"edgeitems": 3, "threshold": 1000, "floatmode": "maxprec", "precision": 8,
                "suppress": False, "linewidth": 75, "nanstr": "nan", "infstr": "inf",
                "sign": "-", "formatter": None, "legacy": False}

    def capture(self, module: types.ModuleType) -> Any:
        options = module.get_printoptions()
        return {k: v for k, v in options.items() if k in self.defaults and
                _differs(v, self.defaults[k])} or None

    def default(self, module: types.ModuleType, key: str) -> Any:
        return self.defaults[key]

    def set(self, module: types.ModuleType, values: dict[str, Any]) -> None:
        if values:
            module.set_printoptions(**values)


class _Matplotlib(_Options):
    """Styles and rcParams: the values that differ from matplotlib's defaults."""

    module = "matplotlib"
    skip = frozenset({"backend", "backend_fallback", "interactive"})

    def capture(self, module: types.ModuleType) -> Any:
        defaults = dict(_stored(module.rcParamsDefault))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: v for k, v in _stored(module.rcParams)
                    if k not in self.skip and _differs(v, defaults.get(k, _NONE))} or None

    def default(self, module: types.ModuleType, key: str) -> Any:
        return module.rcParamsDefault[key]

    def set(self, module: types.ModuleType, values: dict[str, Any]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module.rcParams.update(values)


def _stored(params: Any) -> Any:
    """rcParams' items as stored: RcParams is a dict whose item lookup checks each key for
    deprecation (about 3 ms for all of them, per cell and twice per task); the stored values
    are the same for every key it holds (the deprecated ones are not stored)."""
    return dict.items(params) if isinstance(params, dict) else params.items()


class _Pandas(_Options):
    """pandas options (pd.set_option), all of them: some defaults depend on the process
    (display.max_columns is 0 where pandas thinks it writes to a terminal, as a task does,
    and 20 in a notebook), so a task gets the notebook's whole set."""

    module = "pandas"

    def capture(self, module: types.ModuleType) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: module.get_option(k) for k in _pandas_options(module)}

    def default(self, module: types.ModuleType, key: str) -> Any:
        return _pandas_options(module)[key].defval

    def set(self, module: types.ModuleType, values: dict[str, Any]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for key, value in values.items():
                if key in _pandas_options(module):
                    module.set_option(key, value)


def _pandas_options(module: types.ModuleType) -> Any:
    return module._config.config._registered_options


class _Sklearn(_Options):
    """scikit-learn's configuration (sklearn.set_config), all of it (environment variables
    may set its defaults)."""

    module = "sklearn"

    def capture(self, module: types.ModuleType) -> Any:
        return module.get_config()

    def default(self, module: types.ModuleType, key: str) -> Any:
        return module._config._global_config[key]

    def set(self, module: types.ModuleType, values: dict[str, Any]) -> None:
        known = module.get_config()
        module.set_config(**{k: v for k, v in values.items() if k in known})


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


def seal(states: Mapping[str, Any]) -> dict[str, bytes]:
    """Each state pickled on its own, for a task: the host opens one only once the task has
    imported its module. Opened with the task's other inputs, NumPy's generator state (an
    array) made every task from a notebook that had used `np.random` fail on a host without
    NumPy, even a task that never imports it. cloudpickle, as for the inputs: a pandas
    `float_format` may be a function the notebook defined."""
    sealed = {}
    for key, state in states.items():
        try:
            sealed[key] = cloudpickle.dumps(state, protocol=4)
        except Exception:  # noqa: BLE001 - an unpicklable setting is never sent
            continue
    return sealed


def apply_changes(changes: Mapping[str, Any]) -> list[str]:
    """Apply what a task changed (see `Tracker.changed`) in this process, for the modules
    it has imported (the kernel, after a task); returns the keys that could not be."""
    failed = []
    for key, changed in changes.items():
        setting = SETTINGS.get(key)
        module = sys.modules.get(setting.module) if setting else None
        if setting is None or module is None:
            continue
        try:
            setting.apply(module, changed)
        except Exception:  # noqa: BLE001 - a value this version refuses: say so, go on
            failed.append(key)
    return failed


class Tracker:
    """The runner's side: the kernel's settings (`seal`ed) go in place as their modules are
    imported; afterwards, what the task changed is reported."""

    def __init__(self, states: Mapping[str, bytes],
                 when_imported: Callable[[str, Callable[[types.ModuleType], None]], None]) -> None:
        self.sent = dict(states)
        self.baseline: dict[str, Any] = {}
        for key, setting in SETTINGS.items():
            when_imported(setting.module, lambda module, key=key: self._arrived(key, module))

    def _arrived(self, key: str, module: types.ModuleType) -> None:
        setting = SETTINGS[key]
        try:
            if key in self.sent:
                setting.restore(module, pickle.loads(self.sent[key]))
            self.baseline[key] = setting.capture(module)
        except Exception as exc:  # noqa: BLE001 - run on under this module's defaults
            print(f"remote_magic: the notebook's {setting.module} settings could not be "
                  f"applied here: {exc}", file=sys.stderr)

    def changed(self) -> dict[str, Any]:
        """What the task changed, setting by setting (a whole state, or changed options)."""
        changed = {}
        for key, before in self.baseline.items():
            setting = SETTINGS[key]
            module = sys.modules[setting.module]
            try:
                now = setting.capture(module)
                if _pickled(now) != _pickled(before):
                    changed[key] = setting.changes(module, before, now)
            except Exception:  # noqa: BLE001 - a setting we cannot read now: leave it
                continue
        return changed
