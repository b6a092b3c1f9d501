"""Fixtures: an isolated store and host work directory, and real IPython kernels."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private task store, config and localhost work directory for this test."""
    return isolate(tmp_path, monkeypatch)


def isolate(root: Path, monkeypatch: Any) -> Path:
    config = root / "hosts.yaml"
    config.write_text(f"hosts:\n  localhost:\n    workdir: {root / 'work'}\n")
    monkeypatch.setenv("REMOTE_MAGIC_HOME", str(root / "data"))
    monkeypatch.setenv("REMOTE_MAGIC_CONFIG", str(config))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    from remote_magic import core

    monkeypatch.setattr(core, "_client", None)
    return root


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
        self.manager = KernelManager(kernel_name="python3")
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
        import ast

        out = self.run(f"print('=value=', repr({expression}))")
        return ast.literal_eval(out.stdout.rsplit("=value= ", 1)[1].strip())

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


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real OpenSSH server on a loopback port, logging in this user by key."""
    from remote_magic.testing.sshd import start_sshd

    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bastion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A second sshd, to jump through: its own log shows whether a hop really went by it."""
    from remote_magic.testing.sshd import start_sshd

    server = start_sshd(tmp_path_factory.mktemp("bastion"), alias="bastion")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slurm() -> Any:
    """The live single-node SLURM, started (and its accounting) if it is not running."""
    from remote_magic.testing.schedulers import ensure_slurm

    return ensure_slurm(accounting=True)


@pytest.fixture
def agent(tmp_path: Path) -> Any:
    """The agent's own code, in this process: its scheduler commands run for real."""
    from remote_magic.agent import Agent

    return Agent(str(tmp_path / "work"))


def stage_batch_task(agent: Any, code: str, task: str) -> Any:
    """A task directory holding `code` with no inputs, made through the agent's own
    operation, ready for `op_submit` (the batch tests' way to make one)."""
    from remote_magic.serialization import dump_namespace
    from remote_magic.taskdir import TaskPaths, write_json

    paths = TaskPaths(agent.op_mkdir(task))
    dump_namespace({}, paths.inputs)
    write_json(paths.spec, {"code": code, "filename": "<cell>", "inputs": [], "outputs": [],
                            "imports": {}, "last_expression": False})
    return paths


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def sleep_then(seconds: float, value: str) -> str:
    """A task that takes a while (module-level, so that a pool can ship it)."""
    time.sleep(seconds)
    return value


def count_status_requests(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many tasks each agent `status` request covers, from now on in this test."""
    from remote_magic.agent_client import AgentClient

    asked: list[int] = []
    call = AgentClient.call

    def counting(self: AgentClient, op: str, args: dict[str, Any], *rest: Any,
                 **options: Any) -> Any:
        if op == "status":
            asked.append(len(args["tasks"]))
        return call(self, op, args, *rest, **options)

    monkeypatch.setattr(AgentClient, "call", counting)
    return asked


def ssh_host(server: Any, name: str, workdir: Path, **extra: str) -> str:
    """YAML for a host reaching `server` by key, for start_kernel or a hosts file."""
    import sys

    settings = {"address": f"{server.user}@{server.host}", "port": server.port,
                "identity_file": server.key_path, "known_hosts": server.known_hosts,
                "python": sys.executable, "workdir": workdir, **extra}
    lines = [f"  {name}:"] + [f"    {key}: {value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One kernel shared by a test module, with its own store and work directory."""
    root = tmp_path_factory.mktemp("kernel")
    k = start_kernel(root)
    k.root = root  # type: ignore[attr-defined]
    yield k
    k.shutdown()


# -- markers: what a test needs, so that a part of the suite can run alone -------------------
# e.g. `pytest -m "not slurm and not sge and not browser"`. Set from what each test uses:
# its fixtures (sshd, slurm, sge), and whether its code or its fixtures start a kernel.

NEEDS = {"sshd": {"sshd", "bastion"}, "slurm": {"slurm"}, "sge": {"sge"}}
STARTS_KERNEL = ("start_kernel(", "Kernel(", "NotebookClient(", "run_notebook(")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in NEEDS.items():
            if used & fixtures:
                item.add_marker(marker)
        if item.module is not None and item.module.__name__ == "test_browser":
            item.add_marker("browser")
        if _starts_kernel(item):
            item.add_marker("kernel")


def _starts_kernel(item: pytest.Item) -> bool:
    """The test, one of its fixtures, or a helper of its module that either calls, starts a
    kernel (read from their source)."""
    info = getattr(item, "_fixtureinfo", None)
    functions = [getattr(item, "function", None)] + [
        definition.func for definitions in (info.name2fixturedefs.values() if info else ())
        for definition in definitions]
    helpers = {name: value for name, value in vars(item.module).items()
               if callable(value) and getattr(value, "__module__", None) == item.module.__name__}
    for function in functions:
        source = _source(function)
        if _calls_kernel(source) or any(
                f"{name}(" in source and _calls_kernel(_source(helper))
                for name, helper in helpers.items() if helper is not function):
            return True
    return False


def _calls_kernel(source: str) -> bool:
    return any(call in source for call in STARTS_KERNEL)


_sources: dict[Any, str] = {}


def _source(function: Any) -> str:
    if function not in _sources:
        import inspect

        try:
            _sources[function] = inspect.getsource(function)
        except (OSError, TypeError):
            _sources[function] = ""
    return _sources[function]
