"""`remote-magic test HOST` and `%remote_hosts --test`: check a host step by step.

Each step says what it found and, when it fails, what to do about it; later steps are
skipped once one fails, since they depend on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..config.hosts import Config
from ..errors import RemoteMagicError
from .core import Client


@dataclass
class Check:
    host: str
    step: str
    ok: bool | None  # None: works, but not as it should (a warning)
    detail: str

    def __str__(self) -> str:
        mark = "warn" if self.ok is None else "ok" if self.ok else "FAIL"
        return f"[{mark}] {self.host}: {self.step}: {self.detail}"


def check_host(client: Client, name: str) -> list[Check]:
    checks: list[Check] = []
    try:
        host = client.host(name)
        steps = client.checks(host)
    except RemoteMagicError as exc:
        return [Check(name, "configuration", False, str(exc))]
    for step, ok, detail in steps:
        checks.append(Check(name, step, ok, detail))
        if ok is False:
            return checks
    try:
        info = client.hello(host)
    except RemoteMagicError as exc:
        return [*checks, Check(name, "agent starts, Python matches", False, str(exc))]
    checks.append(Check(name, "agent starts, Python matches", True,
                        f"Python {info['python']} ({info['executable']}), pid {info['pid']} "
                        f"on {info['hostname']}"))
    notes = client.notes(host)
    if notes:
        checks.append(Check(name, "notes", True, "; ".join(notes)))
    return checks


def hosts_list(config: Config) -> list[dict[str, object]]:
    """The hosts as data (`remote-magic hosts --json`): each one's settings as checked."""
    return [{**{k: v for k, v in asdict(host).items() if k != "allocation"},
             "default": name == config.default} for name, host in config.hosts.items()]


def hosts_table(config: Config) -> str:
    source = str(config.path) if config.path else "built-in default (no hosts file found)"
    lines = [f"Hosts from {source}:"]
    for name, host in config.hosts.items():
        mark = "*" if name == config.default else " "
        where = host.address or "this machine"
        lines.append(f" {mark} {name:<16} {host.scheduler:<8} {where}  workdir {host.workdir}")
    return "\n".join(lines)
