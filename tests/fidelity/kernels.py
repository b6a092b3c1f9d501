"""The kernels of a fidelity run, each driven from its own thread as a front end drives it,
reporting per cell what it showed (an Observation) and the state it was left in.

A kernel's state is a fingerprint of every user name (see ``fingerprint.py``, which runs inside
the kernel) and of every file in its directory. Each kernel works in its own copy of the
notebook's folder, with the default inline matplotlib backend and remote_magic's live view as
a widget (widget views are not compared). Two environment settings keep noise out without
hiding anything a user could rely on: L and the targets (and their tasks, also over SSH) share
one string-hash seed while C has another, so set order is random rather than a failure; and
SOURCE_DATE_EPOCH fixes the date that matplotlib and others write into PDF/PS/SVG files, which
would otherwise differ by the second.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .text import clip

FINGERPRINT = Path(__file__).resolve().parent / "fingerprint.py"
FINGERPRINT_MODULE = "_fidelity_fingerprint"
# role: the line before each cell
TARGETS = {"R": "%%remote\n", "S": "%%remote -q hpc\n", "O": "%%remote -q hpc\n"}
TARGET_NAMES = {"R": "%%remote on localhost", "S": "%%remote -q hpc over SSH (paramiko)",
                "O": "%%remote -q hpc over SSH (OpenSSH)"}
SSH_TARGETS = {"S": "paramiko", "O": "openssh"}  # role: the transport of its host `hpc`
ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
SKIP_DIRS = {".ipynb_checkpoints", "__pycache__"}
# Files that record when they were written (PDF, PostScript, SVG by matplotlib) would differ
# between L and a target that runs a second later, while L and C, running together, agree:
# with this, tools that honour it write one fixed date in every kernel.
SOURCE_DATE_EPOCH = "1700000000"
# Loads fingerprint.py as a module of its own, evaluated as a user expression: no user name,
# no history entry, no sys.path change, nothing a cell could import by accident.
LOADER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location({name!r}, {path!r})
module = importlib.util.module_from_spec(spec)
sys.modules[{name!r}] = module
spec.loader.exec_module(module)
"""


class KernelDied(RuntimeError):
    pass


@dataclass
class Observation:
    """What one kernel showed for one cell, and its user names afterwards."""

    ename: str | None = None
    evalue: str = ""
    traceback: str = ""
    stdout: str = ""
    displays: list[str] = field(default_factory=list)
    names: dict[str, tuple[str, str]] = field(default_factory=dict)  # name: (hash, summary)
    seconds: float = 0.0


class Kernel:
    """One ipykernel, driven from its own thread as a front end drives it."""

    def __init__(self, role: str, root: Path, notebook_dir: Path, ssh: Any = None,
                 hash_seed: int = 0) -> None:
        self.role, self.root = role, root
        self.cwd = root / "nb"
        shutil.copytree(notebook_dir, self.cwd, ignore=shutil.ignore_patterns(
            ".ipynb_checkpoints", "__pycache__"))
        hosts = f"hosts:\n  localhost:\n    workdir: {root / 'work'}\n"
        if role in SSH_TARGETS:
            hosts += ssh_host_yaml(ssh, "hpc", root / "remote", SSH_TARGETS[role])
            hosts += (f"    setup: export PYTHONHASHSEED={hash_seed} "
                      f"SOURCE_DATE_EPOCH={SOURCE_DATE_EPOCH}\n")
        (root / "hosts.yaml").write_text(hosts)
        self.env = dict(os.environ)
        self.env.pop("MPLBACKEND", None)  # the inline backend, as a user's kernel has it
        self.env.update(REMOTE_MAGIC_HOME=str(root / "data"),
                        REMOTE_MAGIC_CONFIG=str(root / "hosts.yaml"),
                        REMOTE_MAGIC_DISPLAY="widget", IPYTHONDIR=str(root / "ipython"),
                        PYTHONHASHSEED=str(hash_seed), SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
        self.masks = [[str(root), "<ROOT>"]]
        if os.path.realpath(root) != str(root):
            self.masks.append([os.path.realpath(root), "<ROOT>"])
        self.thread = ThreadPoolExecutor(1, thread_name_prefix=f"kernel-{role}")
        self.manager: Any = None
        self.client: Any = None
        self.log: Any = None
        self.file_hashes: dict[tuple, tuple[str, str]] = {}
        self.snapshot_seconds = 0.0
        self.noise: list[str] = []  # output seen while the harness looked: must stay empty

    def submit(self, fn: Any, *args: Any) -> Future:
        """Every call on this kernel runs in its own thread (zmq sockets stay in one thread)."""
        return self.thread.submit(fn, *args)

    def start(self, timeout: float = 120) -> dict[str, tuple[str, str]]:
        try:
            self._launch(timeout)
        except RuntimeError as exc:
            said = (self.root / "kernel.log").read_text(errors="replace")[-600:]
            raise RuntimeError(f"{exc}; the kernel said: {said or 'nothing'}") from exc
        if self.role in TARGETS:
            loaded = self.execute("%load_ext remote_magic", timeout, store_history=False)
            if loaded.ename:
                raise RuntimeError(f"{self.role}: %load_ext remote_magic failed:\n"
                                   f"{loaded.traceback}")
        loader = LOADER.format(name=FINGERPRINT_MODULE, path=str(FINGERPRINT))
        self.expression(f"exec({loader!r}, {{}})", timeout)
        first = self.expression(f"{self._module}.setup({self.masks!r})", timeout)
        return {**{k: tuple(v) for k, v in json.loads(first)["names"].items()},
                **scan_files(self.cwd, self.file_hashes)}

    def _launch(self, timeout: float) -> None:
        from helpers.kernel import kernel_manager

        self.manager = kernel_manager()
        self.log = open(self.root / "kernel.log", "ab")  # closed at shutdown
        self.manager.start_kernel(env=self.env, cwd=str(self.cwd), stdout=self.log,
                                  stderr=subprocess.STDOUT)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=timeout)

    _module = f"__import__('sys').modules[{FINGERPRINT_MODULE!r}]"

    def run_cell(self, code: str, timeout: float) -> Observation:
        """Execute a cell as a front end does, then fingerprint the namespace silently."""
        started = time.monotonic()
        seen = self.execute(code, timeout)
        seen.seconds = time.monotonic() - started
        snapshot = json.loads(self.expression(f"{self._module}.snapshot()", timeout))
        seen.names = {k: tuple(v) for k, v in snapshot["names"].items()}
        self.snapshot_seconds += snapshot["seconds"]
        seen.names.update(scan_files(self.cwd, self.file_hashes))
        return seen

    def explain(self, name: str, path: list[str]) -> dict[str, Any]:
        return json.loads(self.expression(f"{self._module}.explain({name!r}, {path!r})", 60))

    def execute(self, code: str, timeout: float, store_history: bool = True) -> Observation:
        msg_id = self.client.execute(code, store_history=store_history, allow_stdin=False,
                                     stop_on_error=False)
        seen = Observation()
        stdout: list[str] = []
        for msg in self._messages(msg_id, timeout):
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream" and content["name"] == "stdout":
                stdout.append(content["text"])
            elif kind in ("display_data", "execute_result"):
                data = content.get("data") or {}
                if data and WIDGET_VIEW not in data:
                    label = "result" if kind == "execute_result" else "display"
                    seen.displays.append(f"{label} {'+'.join(sorted(data))}")
            elif kind == "update_display_data":
                data = content.get("data") or {}
                if data and WIDGET_VIEW not in data:
                    seen.displays.append(f"update {'+'.join(sorted(data))}")
            elif kind == "clear_output":
                seen.displays.append("clear_output" + (" (wait)" if content.get("wait") else ""))
            elif kind == "error":
                seen.ename, seen.evalue = content["ename"], content["evalue"]
                seen.traceback = ANSI.sub("", "\n".join(content["traceback"]))
        reply = self._reply(msg_id, timeout)
        if reply["content"]["status"] == "error" and seen.ename is None:
            seen.ename = reply["content"].get("ename", "error")
            seen.evalue = reply["content"].get("evalue", "")
        elif reply["content"]["status"] == "aborted":
            seen.ename = "aborted"
        seen.stdout = mask_text("".join(stdout), self.masks)
        return seen

    def expression(self, expression: str, timeout: float) -> str:
        """A user expression's value (a str), evaluated silently: no history, no execution
        count, no pre/post-run hooks (matplotlib's inline flush, remote_magic's own)."""
        msg_id = self.client.execute("", silent=True, store_history=False,
                                     user_expressions={"value": expression}, allow_stdin=False)
        for msg in self._messages(msg_id, timeout):
            if msg["msg_type"] in ("stream", "display_data", "execute_result", "error"):
                # (IPython fires post_execute even for silent requests: a figure flushed
                # here would be output the cell should have shown)
                self.noise.append(msg["msg_type"] + ": " + clip(repr(msg["content"]), 300))
        reply = self._reply(msg_id, timeout)["content"]["user_expressions"]["value"]
        if reply["status"] != "ok":
            raise RuntimeError(f"{self.role}: harness expression failed: {reply.get('ename')}: "
                               f"{reply.get('evalue')}\n" + "\n".join(reply.get("traceback", [])))
        return ast.literal_eval(reply["data"]["text/plain"])

    def _messages(self, msg_id: str, timeout: float) -> Iterable[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                self._interrupt()
                raise TimeoutError(f"{self.role}: cell did not finish in {timeout:.0f} s")
            try:
                msg = self.client.get_iopub_msg(timeout=1)
            except queue.Empty:
                if not self.manager.is_alive():
                    self.log.flush()
                    tail = (self.root / "kernel.log").read_text(errors="replace")[-2000:]
                    raise KernelDied(f"{self.role}: the kernel died; its log ends:\n{tail}") \
                        from None
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return
            yield msg

    def _reply(self, msg_id: str, timeout: float) -> dict[str, Any]:
        while True:
            reply = self.client.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply

    def _interrupt(self) -> None:
        try:
            self.manager.interrupt_kernel()
        except Exception:
            pass

    def shutdown(self) -> None:
        try:
            if self.client is not None:
                self.client.stop_channels()
            if self.manager is not None:
                self.manager.shutdown_kernel(now=True)
            if self.log is not None:
                self.log.close()
        finally:
            self.thread.shutdown(wait=False)


def ssh_host_yaml(server: Any, name: str, workdir: Path, transport: str = "paramiko") -> str:
    """A hosts-file entry reaching `server` by key, without a `paths` mapping: files travel."""
    settings = {"address": f"{server.user}@{server.host}", "port": server.port,
                "identity_file": server.key_path, "known_hosts": server.known_hosts,
                "python": sys.executable, "workdir": workdir, "transport": transport}
    return f"  {name}:\n" + "".join(f"    {k}: {v}\n" for k, v in settings.items())


def scan_files(directory: Path, cache: dict[tuple, tuple[str, str]]) -> dict[str, tuple]:
    """Pseudo-names `file:<relative path>` for the files under the kernel's directory, with
    a content hash (cached by size and mtime) and a readable line."""
    found = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if not path.is_file() or SKIP_DIRS.intersection(relative.parts):
            continue
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in cache:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                head = f.read(1 << 20)
                while head:
                    digest.update(head)
                    head = f.read(1 << 20)
            with open(path, "rb") as f:
                start = f.read(40)
            cache[key] = (digest.hexdigest()[:16], f"{stat.st_size} bytes {start!r}")
        found[f"file:{relative}"] = cache[key]
    return found


def mask_text(text: str, masks: list[list[str]]) -> str:
    for path, label in sorted(masks, key=lambda m: -len(m[0])):
        text = text.replace(path, label)
    return ADDRESS.sub("0x…", text)
