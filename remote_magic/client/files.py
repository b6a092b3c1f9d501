"""Relative file paths in a remote cell, as they work in a local one.

Where the host sees the notebook's folder (this machine, or a `paths:` mapping covering it: a
shared file system), the cell simply runs there. Elsewhere the cell runs in its task's private
`work/` folder, so the files it names that exist under the notebook's folder are staged in
(the literal strings of its code, the path-like values it receives, the local modules it
imports), and the files it creates or changes there come back next to the notebook, within
the host's `auto_files` limit each way. A local file that changed after the task was prepared
is never overwritten: the task's version lands beside it under another name.
"""

from __future__ import annotations

import ast
import glob
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..config.hosts import HostConfig
from ..host.schedulers.units import memory_bytes

MAX_FILES = 10_000  # files staged from one folder a cell names, at most


def limit_bytes(host: HostConfig) -> int:
    return 0 if not host.auto_files else memory_bytes(host.auto_files)


def shared_folder(host: HostConfig, cwd: Path) -> str | None:
    """Where the notebook's folder is on the host, when the host sees it."""
    if host.is_local:
        return str(cwd)
    for prefix in sorted(host.paths, key=len, reverse=True):
        try:
            rest = cwd.relative_to(prefix)
        except ValueError:
            continue
        remote = host.paths[prefix].rstrip("/") or "/"
        return remote if rest == Path(".") else f"{remote}/{rest.as_posix()}"
    return None


@dataclass
class StagePlan:
    files: list[tuple[Path, str]] = field(default_factory=list)  # (local file, task path)
    left: list[tuple[str, int]] = field(default_factory=list)  # over the limit: (name, bytes)


def plan_stage(code: str, values: Mapping[str, Any], cwd: Path, limit: int) -> StagePlan:
    """The files under `cwd` the cell may read, within `limit` bytes in all."""
    plan = StagePlan()
    if limit <= 0:
        return plan
    names: dict[str, int] = {}
    for candidate in _candidates(code, values):
        for relative in _existing(candidate, cwd):
            for name, size in _files_under(cwd, relative):
                names.setdefault(name, size)
    total = 0
    for name, size in sorted(names.items()):
        if total + size > limit:
            plan.left.append((name, size))
            continue
        total += size
        plan.files.append((cwd / name, f"work/{name}"))
    return plan


def _candidates(code: str, values: Mapping[str, Any]) -> Iterable[str]:
    """Strings that may name files: the cell's string literals, path-like inputs (and those
    in lists, tuples and dicts), and the modules it imports (`import helpers`)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        tree = ast.Module(body=[], type_ignores=[])
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield from _module_files(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield from _module_files(node.module)
    for value in values.values():
        items = value.values() if isinstance(value, dict) else \
            value if isinstance(value, (list, tuple)) and len(value) < 1000 else [value]
        for item in items:
            if isinstance(item, (str, os.PathLike)):
                yield os.fspath(item)
            name = getattr(getattr(item, "fid", None), "name", None)  # np.load(...) of an npz
            if isinstance(name, str):
                yield name


def _module_files(module: str) -> list[str]:
    top = module.partition(".")[0]
    return [f"{top}.py", top]


def _existing(text: Any, cwd: Path) -> list[str]:
    """Relative paths under `cwd` that `text` names and that exist (globs expanded)."""
    if not isinstance(text, str) or not text or len(text) > 1024 or "\n" in text or \
            "\0" in text:
        return []
    path = Path(os.path.expanduser(text))
    if path.is_absolute():
        try:
            path = path.relative_to(cwd)
        except ValueError:
            return []
    found = [path.as_posix()]
    if glob.has_magic(text) and not _exists(cwd / path):  # an existing img[0].png is a name
        pattern = os.path.join(glob.escape(str(cwd)), path.as_posix())
        found = [os.path.relpath(p, cwd) for p in sorted(glob.glob(pattern))[:MAX_FILES]]
    result = []
    for name in found:
        normal = os.path.normpath(name)
        if normal not in (".", "") and not normal.startswith("..") and _exists(cwd / normal):
            result.append(normal)
    return result


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long for this file system, say
        return False


def _files_under(cwd: Path, relative: str) -> Iterable[tuple[str, int]]:
    full = cwd / relative
    if full.is_file():
        yield PurePosixPath(Path(relative)).as_posix(), full.stat().st_size
        return
    for count, path in enumerate(p for p in sorted(full.rglob("*")) if p.is_file()):
        if count >= MAX_FILES:
            return
        yield path.relative_to(cwd).as_posix(), path.stat().st_size


# -- on the way back -------------------------------------------------------------------------


@dataclass
class Returned:
    copied: list[str] = field(default_factory=list)
    beside: dict[str, str] = field(default_factory=dict)  # changed here meanwhile: name -> ours
    left: list[tuple[str, int]] = field(default_factory=list)  # over the limit
    refused: list[str] = field(default_factory=list)  # names that would land outside cwd
    blocked: list[str] = field(default_factory=list)  # a folder of theirs is a file here

    def notes(self) -> list[str]:
        notes = []
        if self.copied:
            notes.append(f"files written by the task, copied here: {', '.join(self.copied)}")
        for name, ours in self.beside.items():
            notes.append(f"{name} changed here while the task ran: kept yours; the task's "
                         f"version is {ours}")
        if self.left:
            shown = ", ".join(f"{n} ({size / 1e6:.1f} MB)" for n, size in self.left)
            notes.append(f"files left on the host (over the host's auto_files limit): {shown}; "
                         "bring them with --collect, or raise auto_files")
        if self.refused:
            notes.append(f"refused file names that point outside this folder, or onto a "
                         f"folder or link here: {', '.join(self.refused)}")
        if self.blocked:
            notes.append(f"files left on the host (a file here has the name of their folder): "
                         f"{', '.join(self.blocked)}; bring them with --collect into another "
                         "folder")
        return notes


def safe_target(cwd: Path, name: str) -> Path | None:
    """Where a file named by the host lands here, or None if it would land outside `cwd`."""
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts or \
            "\0" in name:
        return None
    target = cwd.joinpath(*relative.parts)
    root = cwd.resolve()
    try:
        target.parent.resolve().relative_to(root)
    except (ValueError, OSError):
        return None
    if target.is_symlink() or target.is_dir():
        return None
    return target


def plan_return(written: Iterable[Mapping[str, Any]], cwd: Path, prepared_at: float,
                limit: int, task_id: str) -> tuple[list[tuple[str, Path]], Returned]:
    """Which files the task wrote come back, and under which local name."""
    returned = Returned()
    copies: list[tuple[str, Path]] = []
    total = 0
    for entry in written:
        name, size = str(entry.get("name", "")), int(entry.get("size", 0))
        target = safe_target(cwd, name)
        if target is None:
            returned.refused.append(name)
            continue
        if total + size > limit:
            returned.left.append((name, size))
            continue
        total += size
        try:
            changed_here = target.stat().st_mtime > prepared_at
        except FileNotFoundError:
            changed_here = False
        except NotADirectoryError:  # results/x.csv, with a file called results here
            returned.blocked.append(name)
            total -= size
            continue
        if changed_here:
            beside = target.with_name(f"{target.name}.from-task-{task_id[:8]}")
            copies.append((name, beside))
            returned.beside[name] = beside.relative_to(cwd).as_posix()
        else:
            copies.append((name, target))
            returned.copied.append(name)
    return copies, returned
