"""Run one Jupyter cell on a remote machine or batch scheduler: `%%remote -q HOST`.

`%load_ext remote_magic` registers the magics. Importing the package is cheap on purpose: the
runner on the far side imports it for every task, so nothing heavy is imported here.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["RemoteExecutor", "load_ipython_extension", "progress", "unload_ipython_extension"]

from .host.reporting import progress


def load_ipython_extension(ipython: Any) -> None:
    from .notebook.magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .notebook.magics import unload

    unload(ipython)


def __getattr__(name: str) -> Any:
    if name == "RemoteExecutor":
        from .client.executor import RemoteExecutor

        return RemoteExecutor
    raise AttributeError(f"module 'remote_magic' has no attribute {name!r}")
