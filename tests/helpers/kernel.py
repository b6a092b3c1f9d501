"""A real IPython kernel driven as a notebook front end drives it, for tests of the magics."""

from __future__ import annotations

import ast
import atexit
import itertools
import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager

# The kernel's Client, as an expression to evaluate in the kernel.
CLIENT = "__import__('remote_magic.client.core', fromlist=['_']).get_client()"

_ipc_dir: str | None = None
_ipc_names = itertools.count()
_ipc_lock = threading.Lock()


def kernel_manager() -> KernelManager:
    """A manager whose kernel talks over Unix sockets. Over TCP, jupyter_client picks ports by
    binding and releasing them, so a port can be taken again before the kernel binds it (other
    kernels, the sshd fixtures): the kernel then hangs or dies. Socket files cannot collide;
    their folder is short (a socket path has ~100 bytes at most) and ends with this process."""
    global _ipc_dir
    with _ipc_lock:
        if _ipc_dir is None:
            _ipc_dir = tempfile.mkdtemp(prefix="rm-ipc-")
            atexit.register(shutil.rmtree, _ipc_dir, True)
        prefix = os.path.join(_ipc_dir, f"k{next(_ipc_names)}")
    return KernelManager(kernel_name="python3", transport="ipc", ip=prefix)


@dataclass
class Outcome:
    """What the front end received for one executed cell."""

    reply: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return self._stream("stdout")

    @property
    def stderr(self) -> str:
        return self._stream("stderr")

    def _stream(self, name: str) -> str:
        return "".join(m["content"]["text"] for m in self.messages
                       if m["msg_type"] == "stream" and m["content"]["name"] == name)

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] in types]

    @property
    def error(self) -> dict[str, Any] | None:
        errors = self.of_type("error")
        return errors[0]["content"] if errors else None

    @property
    def result(self) -> dict[str, Any] | None:
        results = self.of_type("execute_result")
        return results[0]["content"]["data"] if results else None

    @property
    def ok(self) -> bool:
        return self.reply["content"]["status"] == "ok"


class Kernel:
    """A real ipykernel, driven as a notebook front end drives it."""

    def __init__(self, env: dict[str, str], cwd: str) -> None:
        self.env, self.cwd = env, cwd
        self.manager = kernel_manager()
        self.manager.start_kernel(env=env, cwd=cwd)
        self._connect()

    def _connect(self) -> None:
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 60, allow_error: bool = False) -> Outcome:
        return self.collect(self.start(code), timeout, allow_error)

    def collect(self, msg_id: str, timeout: float = 60, allow_error: bool = False) -> Outcome:
        """Everything the front end receives for one cell, until the kernel is idle."""
        outcome = Outcome(reply={})
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"cell {msg_id} did not finish in {timeout} s")
            try:
                msg = self.client.get_iopub_msg(timeout=remaining)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            msg["received"] = time.monotonic()
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
            outcome.messages.append(msg)
        # Skip replies to other requests (wait_for_ready may have sent kernel_info twice).
        while True:
            outcome.reply = self.client.get_shell_msg(timeout=timeout)
            if outcome.reply["parent_header"].get("msg_id") == msg_id:
                break
        if not allow_error and outcome.error is not None:
            raise AssertionError("cell failed: " + "\n".join(outcome.error["traceback"]))
        return outcome

    def drain(self, seconds: float, until: Any = None) -> list[dict[str, Any]]:
        """Every iopub message for `seconds` (or until `until(msg)`), whatever its parent:
        widgets updated by a background thread are not tied to a cell."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                msg = self.client.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            got.append(msg)
            if until is not None and until(msg):
                break
        return got

    def value(self, expression: str) -> Any:
        """Evaluate an expression in the kernel and return it (via repr/literal_eval)."""
        out = self.run(f"print('=value=', repr({expression}))")
        return ast.literal_eval(out.stdout.rsplit("=value= ", 1)[1].strip())

    def newest(self, *fields: str) -> tuple[Any, ...]:
        """Fields of the task this kernel's store got last, e.g. `newest("id", "state")`."""
        picked = ", ".join(f"r.{name}" for name in fields)
        return tuple(self.value(f"(lambda r: ({picked},))({CLIENT}.store.list()[0])"))

    def start(self, code: str) -> str:
        """Send a cell without waiting for it (to interrupt it later)."""
        return self.client.execute(code, allow_stdin=False)

    def restart(self) -> None:
        self.client.stop_channels()
        self.manager.restart_kernel(now=True)
        self._connect()

    def shutdown(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def start_kernel(root: Path, hosts: str = "", **env_extra: str) -> Kernel:
    """A kernel with its own store; `hosts` is YAML added under `hosts:` (indented 2)."""
    env = dict(os.environ, **env_extra)
    env.update({"REMOTE_MAGIC_HOME": str(root / "data"),
                "REMOTE_MAGIC_CONFIG": str(root / "hosts.yaml"), "MPLBACKEND": "Agg"})
    (root / "hosts.yaml").write_text(
        f"hosts:\n  localhost:\n    workdir: {root / 'work'}\n{hosts}")
    kernel = Kernel(env, str(root))
    kernel.run("%load_ext remote_magic")
    return kernel
