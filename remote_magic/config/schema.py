"""The hosts file as a JSON Schema, for editors to validate it as it is written.

It is made from the same definitions the loader checks a file with: each host key's check
(`hosts._HOST_CHECKS`) and each resource's (`checks._RESOURCE_CHECKS`) has a fragment here,
and a test proves that every key has one and that a description, so neither can drift from
the loader. The loader stays the judge (it says what to write instead); the schema is what an
editor can know ahead.
"""

from __future__ import annotations

from typing import Any, Callable

from . import checks
from .hosts import _HOST_CHECKS, TOP_LEVEL_KEYS

_INTERVAL = {"oneOf": [{"type": "number", "minimum": 1, "maximum": 3600},
                       {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(s|m|min|h)?\s*$"}]}
FRAGMENTS: dict[Callable[..., Any], dict[str, Any]] = {
    checks.text: {"type": "string", "minLength": 1},
    checks.word: {"type": "string", "pattern": r"^\S+$"},
    checks.script: {"type": "string"},
    checks.port: {"type": "integer", "minimum": 1, "maximum": 65535},
    checks.whole: {"type": "integer", "minimum": 1},
    checks.count: {"type": "integer", "minimum": 1, "maximum": checks.MAX_COUNT},
    checks.switch: {"type": "boolean"},
    checks.interval: _INTERVAL,
    checks.transport: {"enum": list(checks.TRANSPORTS)},
    checks.scheduler: {"type": "string", "examples": list(checks.SCHEDULERS)},
    checks.paths: {"type": "object", "additionalProperties": {"type": "string"}},
    checks.amount: {"oneOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[KMGTP]?i?B?\s*$"}]},
    checks.walltime: {"oneOf": [
        {"type": "integer", "minimum": 1},
        {"type": "string", "pattern": r"^(\d+-)?\d+(:\d{1,2}){0,2}$"}]},
    checks.memory: {"oneOf": [{"type": "integer", "minimum": 1},
                              {"type": "string", "pattern": r"^\d+(\.\d+)?\s*([KMGTP]i?B?|B)?$"}]},
}

DESCRIPTIONS = {
    "address": "user@host, or a Host alias of ~/.ssh/config; absent: this machine",
    "port": "the SSH port (default 22, or the alias's Port)",
    "identity_file": "the private key to log in with",
    "proxy_jump": "jump host(s) to reach it through, as ssh -J takes them",
    "known_hosts": "the known_hosts file its host key is checked against",
    "transport": "paramiko (built in, the default) or openssh (the system's ssh, with all "
                 "of your ssh_config)",
    "scheduler": "process (default), slurm, pbs, lsf, sge, or a plugin's name",
    "python": "the Python on the host (default python3), of the kernel's minor version",
    "workdir": "where task directories live on the host (default ~/.remote_magic)",
    "setup": "shell lines run (in bash -l) before anything else, e.g. module load",
    "paths": "shared folders, local prefix: remote prefix",
    "resources": "the host's default resources for batch jobs; cell options win",
    "max_running": "at most this many tasks at once; more wait locally for a slot",
    "scheduler_poll": "the least time between two queries of the scheduler, for all of "
                      "your kernels together (seconds, or 30s, 2m)",
    "status_interval": "the least time between a kernel's background status requests to "
                       "the host (seconds, or 5s)",
    "template": "a job script template (its text, or the path of a file)",
    "auto_files": "how much of the notebook folder's files may be staged, and of what a "
                  "task writes brought back, automatically (100M, 0: off)",
    "warm": "start tasks in runners forked ahead with their usual imports done (default "
            "true)",
    "walltime": "[days-]hours:minutes:seconds, or minutes",
    "cores": "CPU cores per task", "mem": "memory, e.g. 8G (a bare number: megabytes)",
    "nodes": "nodes", "gpus": "GPUs", "partition": "partition (queue)",
    "account": "account to charge",
}


def _or_null(fragment: dict[str, Any], key: str) -> dict[str, Any]:
    """A key's part: its fragment, or null (the loader reads `key:` with no value as unset)."""
    return {"anyOf": [fragment, {"type": "null"}], "description": DESCRIPTIONS[key]}


def hosts_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a hosts file."""
    resources = {key: _or_null(FRAGMENTS[check], key)
                 for key, check in checks._RESOURCE_CHECKS.items()}
    host: dict[str, Any] = {}
    for key, check in _HOST_CHECKS.items():
        fragment = {"type": "object", "properties": resources,
                    "additionalProperties": False} if check is checks.resources \
            else FRAGMENTS[check]
        host[key] = _or_null(fragment, key)
    assert set(TOP_LEVEL_KEYS) == {"default", "hosts"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "remote_magic hosts file",
        "type": "object",
        "properties": {
            "default": {"type": "string", "description": "the host of a cell without -q"},
            "hosts": {"type": "object", "description": "the hosts, by name",
                      "propertyNames": {"pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]*$"},
                      "additionalProperties": {"type": ["object", "null"],
                                               "properties": host,
                                               "additionalProperties": False}},
        },
        "additionalProperties": False,
    }
