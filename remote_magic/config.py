"""The hosts file: where it is looked for, what it may say, and the checked objects built from it.

A mistake in this file would otherwise show up much later, as an SSH failure or a job the
scheduler rejects after sitting in the queue. So everything is checked here, once, when the file
is loaded, and every complaint names the file, the dotted key (and its line when known) and what
to write instead. Loading never touches the network: it only reads the one file.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import Any

import platformdirs
import yaml

from .errors import ConfigError, OptionError, UnknownHostError

SCHEDULERS = ("process", "slurm", "pbs", "lsf", "sge")
RESOURCE_KEYS = ("walltime", "cores", "mem", "nodes", "gpus", "partition", "account")

ENV_VAR = "REMOTE_MAGIC_CONFIG"
LOCAL_FILE_NAME = "remote_magic.yaml"
USER_FILE_NAME = "hosts.yaml"
LOCALHOST = "localhost"
TOP_LEVEL_KEYS = ("default", "hosts")

# Host names become parts of file and directory names, locally and on the host.
HOST_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# Settings of the host that exists even without a hosts file; a `localhost` entry in the file
# is applied on top of these.
_LOCALHOST_DEFAULTS: dict[str, Any] = {"scheduler": "process"}

# Formats the schedulers share: [days-]hours:minutes:seconds (or fewer fields), and an amount of
# memory with an optional K/M/G/T/P unit. They are checked, not converted: the scheduler layer
# writes them out in its own dialect.
_WALLTIME_RE = re.compile(r"(?:\d+-)?\d+(?::\d{1,2}){0,2}")
_MEMORY_RE = re.compile(r"\d+(?:\.\d+)?\s*(?:[KMGTP]i?B?|B)?", re.IGNORECASE)


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
    scheduler: str = "process"
    python: str | None = None
    workdir: str = "~/.remote_magic"
    setup: str = ""
    paths: Mapping[str, str] = field(default_factory=dict)
    resources: Mapping[str, Any] = field(default_factory=dict)
    max_running: int | None = None
    template: str | None = None

    @property
    def is_local(self) -> bool:
        """Whether commands for this host run here; decides between a subprocess and SSH."""
        return self.address is None


HOST_KEYS = tuple(f.name for f in fields(HostConfig) if f.name != "name")


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
            raise UnknownHostError(key, list(self.hosts), self.path) from None


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
    return parse_config(_read_text(source), source)


def _read_text(path: Path) -> str:
    """Read the file exactly once and turn every OS-level failure into a fixable message."""
    try:
        raw = path.read_bytes()
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


_DIRECTORY_MESSAGE = "is a directory, not a file; point to the YAML hosts file itself"


# --------------------------------------------------------------------------------------------
# YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps `1:00:00` a string.

    YAML 1.1 reads colon-separated digits as base-60 numbers, so an unquoted `walltime: 1:00:00`
    would silently become 3600. Such scalars are resolved as strings instead.
    """


_Loader.yaml_implicit_resolvers = {
    first: list(resolvers) for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
for _first in "+-0123456789":
    _Loader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:str", _SEXAGESIMAL)
    )

_MERGE_TAG = "tag:yaml.org,2002:merge"
_KeyPath = tuple[str, ...]


def _load_yaml(text: str, source: Path | None) -> tuple[Any, dict[_KeyPath, int]]:
    """Parse one YAML document; also map each key path to its line for later messages."""
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _reject_duplicate_keys(node, source)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_describe_yaml_error(exc), source) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise ConfigError(
            f"invalid YAML at line {line}, column {column}: the character {exc.character!r} "
            "is not allowed in YAML; remove it",
            source,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", source) from None
    finally:
        if loader is not None:
            loader.dispose()
    lines: dict[_KeyPath, int] = {}
    _collect_key_lines(node, (), lines, set())
    return data, lines


def _describe_yaml_error(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = exc.problem or "syntax error"
    context = ""
    if exc.context:
        context = f" ({exc.context}"
        if exc.context_mark and exc.context_mark is not mark:
            context += f" at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
        context += ")"
    advice = "check the indentation, colons and quotes around there"
    if "'\\t'" in problem:
        advice = "indent with spaces: YAML does not allow tabs there"
    return f"invalid YAML{where}: {problem}{context}; {advice}"


def _reject_duplicate_keys(root: yaml.Node, source: Path | None) -> None:
    """Refuse a key written twice in one mapping, which YAML would resolve by dropping the first.

    Checked on the node graph, before construction merges `<<:` keys, so that overriding a
    merged key stays legal.
    """
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                stack.append(value_node)
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                ident = (key_node.tag, key_node.value)
                mark = key_node.start_mark
                if ident in first_line:
                    raise ConfigError(
                        f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: the key "
                        f"'{key_node.value}' appears twice in the same mapping (first on line "
                        f"{first_line[ident]}); remove or merge one of them",
                        source,
                    )
                first_line[ident] = mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _collect_key_lines(
    node: yaml.Node, prefix: _KeyPath, out: dict[_KeyPath, int], seen: set[int]
) -> None:
    if not isinstance(node, yaml.MappingNode) or id(node) in seen:
        return
    seen.add(id(node))
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
            path = (*prefix, key_node.value)
            out[path] = key_node.start_mark.line + 1  # the last one wins, as in the data
            _collect_key_lines(value_node, path, out, seen)


# --------------------------------------------------------------------------------------------
# Checking


class _Invalid(Exception):
    """A problem found while checking; turned into a ConfigError once the file and line are known.
    """

    def __init__(self, message: str, where: _KeyPath) -> None:
        super().__init__(message)
        self.message = message
        self.where = where


def parse_config(text: str, path: Path | None = None) -> Config:
    """Check the text of a hosts file; separate from reading so tests need no files.

    `path` only labels messages and `Config.path`.
    """
    source = Path(path) if path is not None else None
    data, lines = _load_yaml(text, source)
    try:
        return _build_config(data, source)
    except _Invalid as exc:
        line = lines.get(exc.where)
        message = exc.message + (f" (line {line})" if line else "")
        raise ConfigError(message, source, ".".join(exc.where) or None) from None


def _build_config(data: Any, source: Path | None) -> Config:
    if data is None:  # an empty file, or one with only comments
        data = {}
    if not isinstance(data, Mapping):
        raise _Invalid(
            f"the file must be a mapping with the keys 'default' and 'hosts', "
            f"but it holds {_show(data)}",
            (),
        )
    _reject_unknown_keys(data, TOP_LEVEL_KEYS, ())

    raw_hosts = data.get("hosts")
    if raw_hosts is None:
        raw_hosts = {}
    if not isinstance(raw_hosts, Mapping):
        raise _Invalid(
            f"must be a mapping from host name to its settings (e.g. 'hpc:' on its own line, "
            f"then indented 'address: me@login.cluster.edu'), not {_show(raw_hosts)}",
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
        raise _Invalid(
            f"{default!r} is not a configured host{_did_you_mean(default, names)} "
            f"Set it to one of: {', '.join(names)}, or add a host of that name under 'hosts'",
            ("default",),
        )
    return Config(path=source, default=default, hosts=hosts)


def _build_host(name: Any, settings: Any) -> HostConfig:
    where = ("hosts", str(name))
    if not isinstance(name, str) or not HOST_NAME_RE.fullmatch(name):
        raise _Invalid(
            f"the host name {name!r} is not allowed: it must start with a letter or digit and "
            "contain only letters, digits, '.', '_' and '-', since it becomes part of file names",
            where,
        )
    if settings is None:
        settings = {}
    if not isinstance(settings, Mapping):
        raise _Invalid(
            f"must be a mapping of settings such as 'address' and 'scheduler', not "
            f"{_show(settings)}; for example '{name}: {{address: me@login.cluster.edu}}'",
            where,
        )
    _reject_unknown_keys(settings, HOST_KEYS, where)
    values = dict(_LOCALHOST_DEFAULTS) if name == LOCALHOST else {}
    for key, raw in settings.items():
        if raw is None:  # `key:` with no value, or `null`: keep the default
            continue
        values[key] = _HOST_CHECKS[key](raw, (*where, key))
    return HostConfig(name=name, **values)


def _reject_unknown_keys(data: Mapping[Any, Any], valid: tuple[str, ...], where: _KeyPath) -> None:
    for key in data:
        if isinstance(key, str) and key in valid:
            continue
        text = str(key)
        hint = _did_you_mean(text, valid)
        raise _Invalid(
            f"unknown key {text!r}{hint} Valid keys here: {', '.join(valid)}", (*where, text)
        )


def _did_you_mean(word: Any, choices: tuple[str, ...] | list[str]) -> str:
    """A sentence-ending fragment: `; did you mean 'x'?` or `.` when nothing is close."""
    if isinstance(word, str):
        close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
        if not close:
            close = [c for c in choices if c.lower() == word.lower()]
        if close:
            return f"; did you mean {close[0]!r}?"
    return "."


def _show(value: Any) -> str:
    """Name the YAML type of a value: a wrong type is usually a quoting or indentation slip."""
    if value is None:
        return "null (nothing)"
    if isinstance(value, bool):
        kind = "a boolean"
    elif isinstance(value, int):
        kind = "an integer"
    elif isinstance(value, float):
        kind = "a number"
    elif isinstance(value, str):
        kind = "a string"
    elif isinstance(value, date):
        kind = "a date"
    elif isinstance(value, Mapping):
        kind = "a mapping"
    elif isinstance(value, (list, tuple)):
        kind = "a list"
    else:
        kind = f"a {type(value).__name__}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} ({text})"


def _text(value: Any, where: _KeyPath) -> str:
    """A non-empty string; empty values would only fail later, far from the file."""
    if not isinstance(value, str):
        hint = ""
        if isinstance(value, (bool, int, float, date)):
            hint = "; put the value in quotes if YAML read it as something else"
        raise _Invalid(f"must be a string, not {_show(value)}{hint}", where)
    if not value.strip():
        raise _Invalid("must not be empty; remove the key to use the default", where)
    return value


def _script(value: Any, where: _KeyPath) -> str:
    """Shell lines may be empty, but must be text (a YAML block with `|` keeps line breaks)."""
    if not isinstance(value, str):
        raise _Invalid(
            f"must be a string of shell lines, not {_show(value)}; write it as a block: "
            "'setup: |' followed by indented lines",
            where,
        )
    return value


def _whole(value: Any, where: _KeyPath, low: int = 1, high: int | None = None) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= low and (high is None or value <= high):
            return value
    span = f"from {low} to {high}" if high is not None else f"of at least {low}"
    hint = ""
    if isinstance(value, str) and value.strip().isdigit():
        hint = "; write it without quotes"
    raise _Invalid(f"must be a whole number {span}, not {_show(value)}{hint}", where)


def _port(value: Any, where: _KeyPath) -> int:
    return _whole(value, where, 1, 65535)


def _scheduler(value: Any, where: _KeyPath) -> str:
    name = _text(value, where).strip().lower()
    if name not in SCHEDULERS:
        raise _Invalid(
            f"unknown scheduler {value!r}{_did_you_mean(name, SCHEDULERS)} "
            f"Use one of: {', '.join(SCHEDULERS)}",
            where,
        )
    return name


def _paths(value: Any, where: _KeyPath) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise _Invalid(
            f"must be a mapping from a local path prefix to the matching remote prefix, e.g. "
            f"{{/home/me/project: /scratch/me/project}}, not {_show(value)}",
            where,
        )
    result: dict[str, str] = {}
    for local, remote in value.items():
        key = (*where, str(local))
        if not isinstance(local, str) or not local.strip():
            raise _Invalid(f"a local path prefix must be a non-empty string, not {_show(local)}",
                           key)
        result[local] = _text(remote, key)
    return result


def _walltime(value: Any, where: _KeyPath) -> str | int:
    if isinstance(value, str) and _WALLTIME_RE.fullmatch(value.strip()):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise _Invalid(
        f"must be a duration such as \"1:00:00\" (hours:minutes:seconds), \"2-00:00:00\" "
        f"(days-hours:minutes:seconds) or a whole number of minutes, not {_show(value)}",
        where,
    )


def _memory(value: Any, where: _KeyPath) -> str | int:
    if isinstance(value, str) and _MEMORY_RE.fullmatch(value.strip()):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise _Invalid(
        f"must be an amount such as \"4G\", \"500M\" or a whole number of megabytes, "
        f"not {_show(value)}",
        where,
    )


_RESOURCE_CHECKS: dict[str, Callable[[Any, _KeyPath], Any]] = {
    "walltime": _walltime,
    "cores": _whole,
    "mem": _memory,
    "nodes": _whole,
    "gpus": _whole,
    "partition": _text,
    "account": _text,
}
assert tuple(_RESOURCE_CHECKS) == RESOURCE_KEYS


def _resources(value: Any, where: _KeyPath) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _Invalid(
            f"must be a mapping such as {{partition: normal, walltime: \"1:00:00\"}}, "
            f"not {_show(value)}",
            where,
        )
    _reject_unknown_keys(value, RESOURCE_KEYS, where)
    return {
        key: _RESOURCE_CHECKS[key](raw, (*where, key))
        for key, raw in value.items()
        if raw is not None
    }


def check_resources(values: Mapping[str, Any]) -> dict[str, Any]:
    """Resources given on a cell or to an executor, checked by the hosts file's own rules.

    A bad value must be refused before the task is prepared, not by a scheduler later.
    """
    try:
        return _resources(values, ())
    except _Invalid as exc:
        raise OptionError(f"resource '{'.'.join(exc.where)}' {exc.message}") from None


_HOST_CHECKS: dict[str, Callable[[Any, _KeyPath], Any]] = {
    "address": _text,
    "port": _port,
    "identity_file": _text,
    "proxy_jump": _text,
    "known_hosts": _text,
    "scheduler": _scheduler,
    "python": _text,
    "workdir": _text,
    "setup": _script,
    "paths": _paths,
    "resources": _resources,
    "max_running": _whole,
    "template": _text,
}
assert tuple(_HOST_CHECKS) == HOST_KEYS
