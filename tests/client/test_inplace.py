"""The kernel's objects take the content a task gave their copies, in place."""

from __future__ import annotations

import copy
import pickle
import random
from collections import OrderedDict, defaultdict
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from remote_magic.client.inplace import update_in_place


def round_trip(value: Any) -> Any:
    return pickle.loads(pickle.dumps(value))


class Plain:
    def __init__(self) -> None:
        self.x = 1


class Slotted:
    __slots__ = ("x", "y")

    def __init__(self) -> None:
        self.x, self.y = 1, 2


@pytest.mark.parametrize("make, change", [
    (lambda: [3, 1, 2], lambda v: v.sort()),
    (lambda: {"a": 1}, lambda v: v.update(b=2)),
    (lambda: OrderedDict(a=1), lambda v: v.move_to_end("a") or v.update(z=0)),
    (lambda: {1, 2}, lambda v: v.add(3)),
    (lambda: bytearray(b"ab"), lambda v: v.extend(b"cd")),
    (lambda: np.zeros(4), lambda v: v.__setitem__(1, 7.0)),
    (lambda: pd.DataFrame({"a": [1, 2]}), lambda v: v.__setitem__("c", v["a"] * 2)),
    (lambda: pd.Series([1.0, 2.0]), lambda v: v.__setitem__(0, 9.0)),
    (lambda: Plain(), lambda v: setattr(v, "x", 5)),
    (lambda: Slotted(), lambda v: setattr(v, "y", 7)),
    (lambda: random.Random(1), lambda v: v.random()),
    (lambda: np.random.default_rng(0), lambda v: v.random()),
    (lambda: np.random.RandomState(0), lambda v: v.rand()),
])
def test_aliases_see_the_change(make: Any, change: Any) -> None:
    old = make()
    alias = old
    new = round_trip(old)
    change(new)
    assert update_in_place(old, new)
    assert alias is old
    assert pickle.dumps(old) == pickle.dumps(new) or _same(old, new)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, pd.DataFrame):
        return a.equals(b)
    if isinstance(a, (random.Random, np.random.RandomState)):
        return a.random() == b.random() if isinstance(a, random.Random) else a.rand() == b.rand()
    if isinstance(a, np.random.Generator):
        return a.random() == b.random()
    return False


def test_a_fitted_estimator_and_the_steps_of_a_pipeline() -> None:
    model = LinearRegression()
    new = round_trip(model).fit([[1], [2], [3]], [2, 4, 6])
    assert update_in_place(model, new)
    assert model.coef_ == pytest.approx([2.0])
    pipe = make_pipeline(StandardScaler(), LinearRegression())
    fitted = round_trip(pipe).fit([[1], [2], [3]], [1, 2, 3])
    assert update_in_place(pipe, fitted) and hasattr(pipe.steps[0][1], "mean_")


def test_defaultdict_keeps_its_factory() -> None:
    old: defaultdict[str, list[int]] = defaultdict(list)
    new = copy.deepcopy(old)
    new["a"].append(1)
    new.default_factory = set  # type: ignore[assignment]
    assert update_in_place(old, new) and old == {"a": [1]} and old.default_factory is set


def test_what_cannot_change_in_place_is_refused() -> None:
    assert not update_in_place((1, [2]), (1, [3]))  # a tuple is what it is
    assert not update_in_place(np.zeros(3), np.zeros(4))  # another shape
    assert not update_in_place(np.zeros(3), np.zeros(3, dtype=np.int32))  # another dtype
    frozen = np.zeros(2)
    frozen.flags.writeable = False
    assert not update_in_place(frozen, np.ones(2)) and frozen.sum() == 0
    assert not update_in_place([1], (1,))  # another type


def test_a_failing_setstate_leaves_the_object_as_it_was() -> None:
    class Fussy:
        def __init__(self) -> None:
            self.x = 1

        def __setstate__(self, state: Any) -> None:
            raise RuntimeError("no")

    old, new = Fussy(), Fussy()
    new.x = 2
    assert not update_in_place(old, new) and old.x == 1


def test_a_class_keeps_its_identity_and_takes_the_new_attributes() -> None:
    class Counter:
        total = 0

        def bump(self) -> int:
            return 1

    instance = Counter()
    new = type("Counter", (), {"total": 5, "bump": lambda self: 2})
    assert update_in_place(Counter, new)
    assert Counter.total == 5 and instance.bump() == 2 and isinstance(instance, Counter)
    assert not update_in_place(int, type("int", (), {"x": 1}))  # built-in types are read-only
