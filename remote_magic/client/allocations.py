"""Allocation names, as this user's kernels know them: which host each allocation is on.

`%remote_alloc gpu -q hpc ...` has hpc's agent submit the allocation's worker job (the
allocation itself, its folder, secret and worker, lives on hpc: host/allocops.py). Here, in
`allocations.json` of the data directory, the name is remembered with its host, so that
`-q gpu` works in every kernel of this user, and still after a restart. The name then stands
for a copy of the host's configuration whose agent starts tasks on the allocation's node.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from ..config.hosts import Config, HostConfig
from ..wire.taskdir import write_atomic
from .paths import data_dir

FILE = "allocations.json"


def known() -> dict[str, dict[str, Any]]:
    """Every allocation name this user started: {name: {"host", "job_id", "created"}}."""
    try:
        with open(data_dir() / FILE, "rb") as f:
            found = json.loads(f.read())
    except FileNotFoundError:
        return {}
    except ValueError:  # damaged: its names are lost, the allocations themselves are not
        return {}
    return found if isinstance(found, dict) else {}


def remember(name: str, entry: dict[str, Any]) -> None:
    with _locked():
        found = known()
        found[name] = entry
        write_atomic(data_dir() / FILE, json.dumps(found, indent=1, sort_keys=True))


def host_config(config: Config, name: str) -> HostConfig | None:
    """The host an allocation's name stands for; None when it is no allocation's name (or
    its host has left the hosts file)."""
    entry = known().get(name)
    if entry is None or entry.get("host") not in config.hosts:
        return None
    parent = config.hosts[entry["host"]]
    return replace(parent, name=name, allocation=name, scheduler="process", max_running=None,
                   resources={}, template=None)


@contextmanager
def _locked() -> Iterator[None]:
    """One kernel at a time changes the file (two `%remote_alloc` at once keep both)."""
    fd = os.open(data_dir() / (FILE + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
