"""Batch schedulers: each module fills the hooks of `base.BatchScheduler`."""

from __future__ import annotations

from .base import Array, BatchScheduler, JobState

__all__ = ["Array", "BatchScheduler", "JobState", "scheduler_for"]


def scheduler_for(name: str) -> BatchScheduler:
    """The scheduler called `name` in a host's configuration."""
    if name == "slurm":
        from .slurm import Slurm

        return Slurm()
    if name == "pbs":
        from .pbs import Pbs

        return Pbs()
    if name == "lsf":
        from .lsf import Lsf

        return Lsf()
    if name == "sge":
        from .sge import Sge

        return Sge()
    raise ValueError(f"no batch scheduler called {name!r}")
