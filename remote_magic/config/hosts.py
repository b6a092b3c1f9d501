"""The hosts file: where it is looked for, what it may say, and the checked objects built from it.

A mistake in this file would otherwise show up much later, as an SSH failure or a job the
scheduler rejects after sitting in the queue. So everything is checked here, once, when the file
is loaded, and every complaint names the file, the dotted key (and its line when known) and what
to write instead. Loading never touches the network: it only reads the one file.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs

from ..errors import ConfigError, OptionError, UnknownHostError, clipped, echo
from . import checks
from .checks import RESOURCE_KEYS, SCHEDULERS, check_resources
from .strict_yaml import KeyPath, load_yaml

__all__ = ["RESOURCE_KEYS", "SCHEDULERS", "Config", "HostConfig", "check_resources",
           "find_config_file", "job_resources", "load_config", "parse_config",
           "user_config_file"]

ENV_VAR = "REMOTE_MAGIC_CONFIG"
LOCAL_FILE_NAME = "remote_magic.yaml"
USER_FILE_NAME = "hosts.yaml"
LOCALHOST = "localhost"
TOP_LEVEL_KEYS = ("default", "hosts")
# A hosts file is a few kilobytes; one larger than this is not one (or is /dev/zero), and
# reading it whole would only delay the error while filling memory.
MAX_FILE_BYTES = 1 << 20

# Host names become parts of file and directory names, locally and on the host.
HOST_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# Settings of the host that exists even without a hosts file; a `localhost` entry in the file
# is applied on top of these.
_LOCALHOST_DEFAULTS: dict[str, Any] = {"scheduler": "process"}


@dataclass(frozen=True)
class HostConfig:
    """One checked entry of `hosts:`; frozen so a loaded configuration cannot drift mid-session.

    Values are kept as the user wrote them (no `~` expansion, no interpreter lookup), because
    they are interpreted on the host, which may not be this machine. `address is None` means the
    commands run on this machine without SSH. `python is None` leaves the choice to the runner:
    the kernel's own interpreter for a local host, `python3` for a remote one. In `resources`,
    `cores`, `nodes` and `gpus` are ints; `walltime` and `mem` are a checked string or a positive
    int (a bare number is minutes, respectively megabytes); `partition` and `account` are strings.
    """

    name: str
    address: str | None = None
    port: int | None = None
    identity_file: str | None = None
    proxy_jump: str | None = None
    known_hosts: str | None = None
    # How SSH is spoken: "paramiko" (built in) or "openssh" (the system's ssh, with all of
    # the user's ssh_config: client/transport/openssh.py).
    transport: str = "paramiko"
    scheduler: str = "process"
    python: str | None = None
    workdir: str = "~/.remote_magic"
    setup: str = ""
    paths: Mapping[str, str] = field(default_factory=dict)
    resources: Mapping[str, Any] = field(default_factory=dict)
    max_running: int | None = None
    # The least seconds between two queries of the scheduler on this host, for all of the
    # user's kernels together (host/queuecache.py); None: once a second at most.
    scheduler_poll: float | None = None
    # The least seconds between two status requests of a kernel to the host's agent (its
    # background polls; a task's end is still pushed at once). None: as each view needs.
    status_interval: float | None = None
    template: str | None = None
    # How much of the notebook folder's files a cell uses may be staged automatically, and
    # how much of what it writes comes back, on a host that does not share that folder.
    auto_files: str | int = "100M"
    # Keep a runner forked ahead with this host's usual imports done (host/warm.py); false
    # starts every task in a fresh fork of the agent, for a library that breaks in a forked
    # child after import and that remote_magic does not know of.
    warm: bool = True
    # Not a key of the hosts file: set on the host that an allocation's name stands for (a
    # copy of the host it runs on), whose agent then starts tasks on the allocation's node.
    allocation: str | None = None

    @property
    def is_local(self) -> bool:
        """Whether commands for this host run here; decides between a subprocess and SSH."""
        return self.address is None

    def job_template(self) -> str | None:
        """The host's job script template: its text, or that of the file it names."""
        if self.template is None:
            return None
        path = Path(self.template).expanduser()
        if "\n" not in self.template and path.is_file():
            return path.read_text()
        return self.template


HOST_KEYS = tuple(f.name for f in fields(HostConfig) if f.name not in ("name", "allocation"))


@dataclass(frozen=True)
class Config:
    """The whole checked file; `path` is kept so later errors can say which file to edit."""

    path: Path | None
    default: str
    hosts: Mapping[str, HostConfig]

    def host(self, name: str | None = None) -> HostConfig:
        """Look a host up by name, so an unknown `-q` name fails with the list of choices."""
        key = self.default if name is None else name
        try:
            return self.hosts[key]
        except KeyError:
            raise UnknownHostError(clipped(key, 60), list(self.hosts), self.path) from None


# --------------------------------------------------------------------------------------------
# Finding and reading the file


def user_config_file() -> Path:
    """The per-user hosts file, also the place to suggest when no file exists yet."""
    return Path(platformdirs.user_config_dir("remote_magic")) / USER_FILE_NAME


def find_config_file() -> Path | None:
    """Pick the hosts file by the documented precedence, without reading it.

    A path named by the environment variable must exist: silently falling back to another file
    would run cells on hosts the user did not mean. An empty variable counts as unset.
    """
    named = os.environ.get(ENV_VAR)
    if named:
        path = Path(named).expanduser().absolute()
        if not (path.exists() or path.is_symlink()):
            raise ConfigError(
                f"this file, named by the environment variable {ENV_VAR}, does not exist; "
                f"create it, fix the variable, or unset it to use ./{LOCAL_FILE_NAME} "
                f"or {user_config_file()}",
                path,
            )
        return path
    candidates = []
    try:
        candidates.append(Path.cwd() / LOCAL_FILE_NAME)
    except OSError:  # the working directory was removed under us: nothing to find there
        pass
    candidates.append(user_config_file())
    for candidate in candidates:
        # A dangling symlink still counts: the user meant that file, and reading it says why not.
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and check a hosts file; with nothing to read, only `localhost` is configured.

    An explicit `path` must be readable; `None` searches as `find_config_file` does.
    """
    if path is None:
        source = find_config_file()
        if source is None:
            return parse_config("", None)
    else:
        source = Path(os.fspath(path)).expanduser()
    text = _read_text(source)
    known = _parsed.get(source)
    if known is not None and known[0] == text:
        return known[1]
    config = _parsed[source] = (text, parse_config(text, source))
    return config[1]


# The last text read from each hosts file and the Config it made: the file is asked for several
# times per cell, and reading a few hundred bytes costs microseconds where parsing and checking
# them costs a millisecond. Compared by content, so that an edit is seen at once, however fast.
_parsed: dict[Path, tuple[str, Config]] = {}


def _read_text(path: Path) -> str:
    """Read the file exactly once and turn every OS-level failure into a fixable message."""
    try:
        raw = _read_bounded(path)
    except FileNotFoundError:
        raise ConfigError("no such file; check the path or create the file", path) from None
    except IsADirectoryError:
        raise ConfigError(_DIRECTORY_MESSAGE, path) from None
    except PermissionError:
        if path.is_dir():  # Windows reports a directory this way
            raise ConfigError(_DIRECTORY_MESSAGE, path) from None
        raise ConfigError(
            "cannot be read: permission denied; make it readable by you (chmod u+r)", path
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror or exc}", path) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"is not UTF-8 text (undecodable byte on line {line}); save it as UTF-8", path
        ) from None


def _read_bounded(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES. Anything else is refused before
    it is opened: opening a pipe waits for a writer, and a device may never end."""
    info = path.stat()
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(path)
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError("is not a regular file (a pipe, socket or device); point to the YAML "
                          "hosts file itself", path)
    if info.st_size > MAX_FILE_BYTES:
        raise ConfigError(f"is larger than {MAX_FILE_BYTES // 1024} KiB, which no hosts file "
                          "needs; point to the YAML hosts file itself", path)
    return path.read_bytes()


_DIRECTORY_MESSAGE = "is a directory, not a file; point to the YAML hosts file itself"


def parse_config(text: str, path: Path | None = None) -> Config:
    """Check the text of a hosts file; separate from reading so tests need no files.

    `path` only labels messages and `Config.path`.
    """
    source = Path(path) if path is not None else None
    data, lines = load_yaml(text, source)
    try:
        return _build_config(data, source)
    except checks.Invalid as exc:
        line = lines.get(exc.where)
        message = exc.message + (f" (line {line})" if line else "")
        raise ConfigError(message, source, ".".join(exc.where) or None) from None


def _build_config(data: Any, source: Path | None) -> Config:
    if data is None:  # an empty file, or one with only comments
        data = {}
    if not isinstance(data, Mapping):
        raise checks.Invalid(
            f"the file must be a mapping with the keys 'default' and 'hosts', "
            f"but it holds {checks.show(data)}",
            (),
        )
    checks.reject_unknown_keys(data, TOP_LEVEL_KEYS, ())

    raw_hosts = data.get("hosts")
    if raw_hosts is None:
        raw_hosts = {}
    if not isinstance(raw_hosts, Mapping):
        raise checks.Invalid(
            f"must be a mapping from host name to its settings (e.g. 'hpc:' on its own line, "
            f"then indented 'address: me@login.cluster.edu'), not {checks.show(raw_hosts)}",
            ("hosts",),
        )
    hosts: dict[str, HostConfig] = {}
    for name, settings in raw_hosts.items():
        host = _build_host(name, settings)
        hosts[host.name] = host
    if LOCALHOST not in hosts:
        hosts[LOCALHOST] = _build_host(LOCALHOST, None)

    default = data.get("default")
    if default is None:
        default = LOCALHOST
    elif not isinstance(default, str) or default not in hosts:
        names = sorted(hosts)
        raise checks.Invalid(
            f"{echo(default, 40)} is not a configured host{checks.did_you_mean(default, names)} "
            f"Set it to one of: {', '.join(names)}, or add a host of that name under 'hosts'",
            ("default",),
        )
    return Config(path=source, default=default, hosts=hosts)


def _build_host(name: Any, settings: Any) -> HostConfig:
    where = ("hosts", clipped(name, 40) if isinstance(name, str) else echo(name, 40))
    if not isinstance(name, str) or not HOST_NAME_RE.fullmatch(name) or len(name) > 100:
        raise checks.Invalid(
            f"the host name {echo(name, 40)} is not allowed: it must start with a letter or "
            "digit and contain only letters, digits, '.', '_' and '-', at most 100 of them, "
            "since it becomes part of file names",
            where,
        )
    if settings is None:
        settings = {}
    if not isinstance(settings, Mapping):
        raise checks.Invalid(
            f"must be a mapping of settings such as 'address' and 'scheduler', not "
            f"{checks.show(settings)}; for example "
            f"'{clipped(name, 40)}: {{address: me@login.cluster.edu}}'",
            where,
        )
    checks.reject_unknown_keys(settings, HOST_KEYS, where)
    values = dict(_LOCALHOST_DEFAULTS) if name == LOCALHOST else {}
    for key, raw in settings.items():
        if raw is None:  # `key:` with no value, or `null`: keep the default
            continue
        values[key] = _HOST_CHECKS[key](raw, (*where, key))
    if values.get("scheduler", "process") != "process" and "workdir" in values:
        checks.batch_workdir(values["workdir"], (*where, "workdir"))
    host = HostConfig(name=name, **values)
    if values.get("resources"):  # defaults the scheduler would refuse fail every task later
        try:
            job_resources(host, {})
        except OptionError as exc:
            raise checks.Invalid(str(exc), (*where, "resources")) from None
    return host


# Where the check below pretends a task's directory is: a plain path, so that only the
# resources can make the scheduler's rendering fail.
_CHECK_TASKDIR = "/rm-check/tasks/0000000000000000"


def job_resources(host: HostConfig, resources: Mapping[str, Any]) -> dict[str, Any]:
    """The resources a task on `host` asks for (the host's defaults, then the task's), refused
    now if the host's scheduler would refuse them when writing the job script: by then the
    task would be staged, and the refusal would come back as a failed submission."""
    merged = {**host.resources, **resources}
    if host.scheduler == "process":
        return merged
    from ..host.schedulers import scheduler_for

    try:
        scheduler_for(host.scheduler).resource_lines(merged, "rm-check", _CHECK_TASKDIR)
    except ValueError as exc:
        raise OptionError(f"host '{host.name}' ({host.scheduler}) cannot take these "
                          f"resources: {clipped(str(exc), 300)}") from None
    return merged


_HOST_CHECKS: dict[str, Callable[[Any, KeyPath], Any]] = {
    "address": checks.text,
    "port": checks.port,
    "identity_file": checks.text,
    "proxy_jump": checks.text,
    "known_hosts": checks.text,
    "transport": checks.transport,
    "scheduler": checks.scheduler,
    "python": checks.text,
    "workdir": checks.text,
    "setup": checks.script,
    "paths": checks.paths,
    "resources": checks.resources,
    "max_running": checks.whole,
    "scheduler_poll": checks.interval,
    "status_interval": checks.interval,
    "template": checks.text,
    "auto_files": checks.amount,
    "warm": checks.switch,
}
assert tuple(_HOST_CHECKS) == HOST_KEYS
