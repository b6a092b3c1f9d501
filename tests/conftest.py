"""Fixtures (an isolated store and work directory, SSH servers, SLURM, an in-process agent, a
shared kernel) and the markers that say what each test needs. Helpers live in tests/helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers.hosts
import pytest
from helpers.hosts import isolate
from helpers.kernel import start_kernel


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private task store, config and localhost work directory for this test."""
    return isolate(tmp_path, monkeypatch)


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
    from remote_magic.host.agent import Agent

    return Agent(str(tmp_path / "work"))


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One kernel shared by a test module, with its own store and work directory."""
    root = tmp_path_factory.mktemp("kernel")
    k = start_kernel(root)
    k.root = root  # type: ignore[attr-defined]
    yield k
    k.shutdown()


# -- SSH transports: the SSH tests run once over each -----------------------------------------
# A test of these modules whose code or fixtures make a host with helpers.hosts.ssh_host runs
# once per transport; ssh_host gives its host the transport of the run.

TRANSPORTS = ("paramiko", "openssh")
BOTH_TRANSPORTS = {"test_ssh", "test_ssh_more", "test_sweep_ssh", "test_concurrent_submit",
                   "test_limits", "test_streamed_inputs", "test_followed_outputs",
                   "test_parallel_streams", "test_alloc", "test_fidelity_kernel", "test_logging",
                   "test_sge", "test_slurm", "test_sweep_slurm", "test_modes", "test_bad_input",
                   "test_scheduler_poll"}


@pytest.fixture(scope="module", autouse=True)
def ssh_transport(request: pytest.FixtureRequest) -> Iterator[str]:
    """The transport helpers.hosts.ssh_host writes into hosts (paramiko unless the test is
    parametrized over both); module-scoped, so a module's shared kernel follows it."""
    chosen = getattr(request, "param", "paramiko")
    before, helpers.hosts.TRANSPORT = helpers.hosts.TRANSPORT, chosen
    yield chosen
    helpers.hosts.TRANSPORT = before


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__ not in BOTH_TRANSPORTS:
        return
    fixtures = getattr(metafunc, "_arg2fixturedefs", {})
    functions = [metafunc.function] + [d.func for ds in fixtures.values() for d in ds]
    if any("ssh_host(" in _source(f) for f in functions):
        metafunc.parametrize("ssh_transport", TRANSPORTS, indirect=True, scope="module")
    for definitions in fixtures.values():
        for fixture in definitions:
            # one made once for the module would serve both transports' runs with the first's
            if fixture.scope != "function" and "ssh_host(" in _source(fixture.func) and \
                    "ssh_transport" not in fixture.argnames:
                raise pytest.UsageError(
                    f"fixture {fixture.argname} ({metafunc.module.__name__}) makes an SSH host "
                    f"for the {fixture.scope}: give it the ssh_transport argument")


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
