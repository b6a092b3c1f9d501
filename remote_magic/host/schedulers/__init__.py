"""Batch schedulers: each fills the hooks of `base.BatchScheduler`.

A scheduler is found by the name a host's `scheduler:` gives, among the entry points of the
group `remote_magic.schedulers` (`name = "module:Class"`, a BatchScheduler subclass), where
a site's own (Flux, HTCondor, OAR, PJM, ...) is registered by the package that provides it.
The built-in ones are registered there too, and also known by name here: on a host, the
runtime shipped by the kernel is a zip without package metadata, and looking up entry
points costs an import the host side avoids when it can.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import Array, BatchScheduler, JobState

__all__ = ["GROUP", "Array", "BatchScheduler", "JobState", "scheduler_for", "scheduler_names"]

GROUP = "remote_magic.schedulers"
BUILT_IN = {
    "slurm": "remote_magic.host.schedulers.slurm:Slurm",
    "pbs": "remote_magic.host.schedulers.pbs:Pbs",
    "lsf": "remote_magic.host.schedulers.lsf:Lsf",
    "sge": "remote_magic.host.schedulers.sge:Sge",
}


def scheduler_for(name: str) -> BatchScheduler:
    """The scheduler called `name` in a host's configuration."""
    target = BUILT_IN.get(name) or plugins().get(name)
    if target is None:
        raise ValueError(f"no batch scheduler called {name!r} (known: "
                         f"{', '.join(scheduler_names()[1:])})")
    module, _, attribute = target.partition(":")
    found: Any = importlib.import_module(module)
    for part in attribute.split("."):
        found = getattr(found, part)
    if not (isinstance(found, type) and issubclass(found, BatchScheduler)):
        raise ValueError(f"the scheduler {name!r} registered as {target} is not a "
                         "BatchScheduler subclass")
    return found()


def plugins() -> dict[str, str]:
    """Schedulers registered as entry points (name -> "module:Class"), built-in ones too."""
    from importlib.metadata import entry_points

    try:
        found = entry_points(group=GROUP)
    except TypeError:  # Python 3.9: a dict of groups
        found = entry_points().get(GROUP, [])  # type: ignore[attr-defined]
    return {point.name: point.value for point in found}


def scheduler_names() -> tuple[str, ...]:
    """What `scheduler:` may say: "process", the built-in schedulers, then plugins."""
    return ("process", *BUILT_IN, *sorted(set(plugins()) - set(BUILT_IN)))
