"""Waiting for something that happens in another process or thread, without a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Whether `predicate` came true within `timeout` seconds (polled every `interval`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def sleep_then(seconds: float, value: str) -> str:
    """A task that takes a while (module-level, so that a pool can ship it)."""
    time.sleep(seconds)
    return value
