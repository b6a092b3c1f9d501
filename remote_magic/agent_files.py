"""The agent's file operations: staging a task in, streaming large files, reading results.

Every file is written to a temporary name and renamed into place once its size (and, when the
sender gave one, its hash) is verified, so a dropped connection never leaves a half-written
input or result behind: a short or damaged upload is deleted when it is refused, one still
open when the agent exits (its connection dropped) is deleted then, and a task whose staged
files arrive damaged leaves no task directory. Large files travel as a stream of chunks on a
channel of their own.
"""

from __future__ import annotations

import atexit
import glob
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from .taskdir import FINAL_STATES, TaskPaths, make_task_dir, read_state

CHUNK = 4 * 1024 * 1024  # bytes per streamed frame


class FileOps:
    """Mixed into the Agent: `self.payload` is the current request's payload, `self.reply_stream`
    sends one chunk of a streamed answer, `self.workdir` anchors relative paths."""

    workdir: Path
    payload: bytes
    payload_out: bytes
    reply_stream: Callable[[bytes], None]
    paths: Callable[[str], TaskPaths]

    def _uploads(self) -> dict[int, _Upload]:
        if not hasattr(self, "_open_uploads"):
            self._open_uploads: dict[int, _Upload] = {}
            atexit.register(self._abandon_uploads)
        return self._open_uploads

    def _abandon_uploads(self) -> None:
        """Delete what unfinished uploads wrote: the kernel never confirmed them."""
        for upload in self._open_uploads.values():
            upload.abandon()
        self._open_uploads.clear()

    def resolve(self, path: str) -> Path:
        """Relative paths live under the work directory; `~` is this user's home."""
        full = Path(os.path.expanduser(path))
        return full if full.is_absolute() else self.workdir / full

    def op_stage(self, task: str, files: list[dict[str, Any]]) -> str:
        """Create the task directory and write its files from the request's payload."""
        paths = self.paths(task)
        if paths.root.exists():
            state = read_state(paths)["state"]
            if state not in FINAL_STATES and state != "prepared":
                raise RuntimeError(f"task {task} is {state}: it cannot be staged again")
            shutil.rmtree(paths.root)
        make_task_dir(paths.root)
        view = memoryview(self.payload)
        offset = 0
        try:
            for entry in files:
                data = view[offset:offset + entry["size"]]
                offset += entry["size"]
                if len(data) != entry["size"] or \
                        hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise ValueError(f"{entry['name']} arrived damaged (size or hash differs)")
                target = _inside(paths.root, entry["name"])
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                _write_new(target, data)
        except BaseException:
            shutil.rmtree(paths.root, ignore_errors=True)  # half a task must not look staged
            raise
        return str(paths.root)

    def op_put_open(self, path: str, size: int, verify: bool = False) -> int:
        target = self.resolve(path)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        upload = _Upload(target, size, verify)
        handle = id(upload)
        self._uploads()[handle] = upload
        return handle

    def op_put_chunk(self, handle: int) -> None:
        upload = self._uploads().get(handle)
        if upload is not None:
            upload.write(self.payload)

    def op_put_close(self, handle: int, sha256: str | None = None) -> int:
        upload = self._uploads().pop(handle, None)
        if upload is None:
            raise RuntimeError("upload was not opened (see the previous error)")
        return upload.finish(sha256)

    def op_get(self, path: str, offset: int = 0) -> dict[str, Any]:
        """Stream a file back in chunks; the reply, after the last chunk, gives its size."""
        sent = 0
        with open(self.resolve(path), "rb") as f:
            f.seek(offset)
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                self.reply_stream(chunk)
                sent += len(chunk)
        return {"size": sent}

    def op_read(self, task: str, names: list[str], inline_max: int) -> list[dict[str, Any]]:
        """Small files of a task inline in the payload; for larger ones only their size."""
        paths = self.paths(task)
        listing, parts = [], []
        for name in names:
            try:
                size = _inside(paths.root, name).stat().st_size
            except FileNotFoundError:
                continue
            inline = size <= inline_max
            if inline:
                data = _inside(paths.root, name).read_bytes()
                size = len(data)
                parts.append(data)
            listing.append({"name": name, "size": size, "inline": inline})
        self.payload_out = b"".join(parts)
        return listing

    def op_glob(self, task: str, patterns: list[str]) -> list[dict[str, Any]]:
        """Files of the task's working directory matching `patterns` (folders expanded)."""
        work = self.paths(task).work
        found: dict[str, int] = {}
        for pattern in patterns:
            for match in sorted(glob.glob(str(work / pattern), recursive=True)):
                candidates = [Path(match)] if os.path.isfile(match) else [
                    p for p in Path(match).rglob("*") if p.is_file()]
                for file in candidates:
                    found[str(file.relative_to(work))] = file.stat().st_size
        return [{"name": name, "size": size} for name, size in found.items()]


class _Upload:
    def __init__(self, target: Path, size: int, verify: bool) -> None:
        self.target = target
        self.size = size
        self.digest = hashlib.sha256() if verify else None
        self.tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish()
        os.chmod(self.tmp, 0o600)
        self.written = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        if self.digest is not None:
            self.digest.update(data)
        self.written += len(data)

    def finish(self, sha256: str | None) -> int:
        self.file.close()
        try:
            if self.written != self.size:
                raise ValueError(f"{self.target}: received {self.written} of {self.size} bytes")
            if self.digest is not None and self.digest.hexdigest() != sha256:
                raise ValueError(f"{self.target}: content hash differs from the sender's")
            os.replace(self.tmp, self.target)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        return self.written

    def abandon(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _inside(root: Path, name: str) -> Path:
    """`root/name`, refusing names that would leave `root`."""
    target = (root / name).resolve()
    if target != root.resolve() and root.resolve() not in target.parents:
        raise ValueError(f"{name!r} is outside the task directory")
    return root / name


def _write_new(target: Path, data: memoryview) -> None:
    tmp = target.with_name(f".{target.name}.part")
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, target)
