"""Run a function as soon as a module is imported, by whoever imports it."""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any, Callable


def when_imported(name: str, hook: Callable[[types.ModuleType], None]) -> None:
    """Call `hook` with module `name` once it is imported (now, if it already is).

    Whatever imports it counts: the cell, a function sent from an earlier cell, a library.
    Importing the module ahead of need instead would cost every task its import time.
    """
    if name in sys.modules:
        hook(sys.modules[name])
        return

    class Finder:
        @staticmethod
        def find_spec(fullname: str, path: Any, target: Any = None) -> Any:
            if fullname != name:
                return None
            sys.meta_path.remove(Finder)
            spec = importlib.util.find_spec(fullname)
            loader = getattr(spec, "loader", None)
            if loader is not None and hasattr(loader, "exec_module"):
                execute = loader.exec_module

                def exec_then_hook(module: types.ModuleType) -> None:
                    execute(module)
                    hook(module)

                loader.exec_module = exec_then_hook
            return spec

    sys.meta_path.insert(0, Finder)  # type: ignore[arg-type]
