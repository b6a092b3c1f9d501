"""Drive a real JupyterLab in headless Chromium, for tests of what a notebook user sees.

`jupyter_lab()` starts JupyterLab on a free loopback port with throw-away HOME and Jupyter
directories, a token, and a remote_magic store and hosts file of its own (the kernels inherit
the server's environment). `chromium_page()` opens Debian's /usr/bin/chromium through
Playwright (no `playwright install`), with every host name but 127.0.0.1 unresolvable, so
nothing leaves the machine. `open_notebook()`, `run_all_cells()`, `wait_in_page()` and
`screenshot()` do the rest. Every wait is bounded, and both the server and the browser are
stopped on the way out, whatever happened.

Cells run through JupyterLab's own command registry (the server exposes the app as
`window.jupyterapp`), which needs neither focus nor keyboard nor menus.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import TESTS

CHROMIUM = "/usr/bin/chromium"
TOKEN = "remote-magic-browser-test"
ARTIFACTS = TESTS / "artifacts"

# Keep JupyterLab from reaching out: no update check, no news feed, no extension catalogue.
LAB_OFFLINE = [
    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    "--LabApp.news_url=None",
    "--LabApp.extension_manager=readonly",
]
# Chromium may resolve nothing but the loopback literal the server listens on. (Playwright
# adds --no-sandbox itself, which Chromium needs when run as root.)
CHROMIUM_ARGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-dev-shm-usage",
]


def browser_available() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"needs Debian's chromium at {CHROMIUM} (scripts/system-deps.sh installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "needs the playwright Python package (pip install -e '.[test]')"
    return None


@dataclass
class Lab:
    """A running JupyterLab server."""

    proc: subprocess.Popen[bytes]
    url: str  # http://127.0.0.1:PORT
    tmp: Path  # private HOME, Jupyter dirs, remote_magic store, server.log
    started_in: float  # seconds from launch until the REST API answered

    @property
    def root(self) -> Path:
        """The server's root directory: notebooks to open go here."""
        return self.tmp / "root"

    @property
    def log(self) -> Path:
        return self.tmp / "server.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _lab_environment(tmp: Path) -> dict[str, str]:
    """The server's environment, which its kernels inherit."""
    env = dict(os.environ)
    # Nothing tells the kernel which front end it serves: it must find out as it would for a
    # user (JupyterLab's server sets JPY_SESSION_NAME for it).
    for name in ("JPY_SESSION_NAME", "JUPYTER_PATH", "JUPYTER_PREFER_ENV_PATH",
                 "REMOTE_MAGIC_DISPLAY"):
        env.pop(name, None)
    hosts = tmp / "hosts.yaml"
    hosts.write_text(f"hosts:\n  localhost:\n    workdir: {tmp / 'work'}\n")
    env.update({
        "HOME": str(tmp / "home"),
        "JUPYTER_CONFIG_DIR": str(tmp / "config"),
        "JUPYTER_DATA_DIR": str(tmp / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "IPYTHONDIR": str(tmp / "ipython"),
        "REMOTE_MAGIC_HOME": str(tmp / "store"),
        "REMOTE_MAGIC_CONFIG": str(hosts),
        "MPLBACKEND": "Agg",
        "PYTHONUNBUFFERED": "1",
    })
    # The interpreter running the server comes first, so that "python" in the kernelspec is it.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def start_lab(timeout: float = 60.0) -> Lab:
    """Start JupyterLab in a fresh temporary directory; return once its API answers."""
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="remote-magic-lab-"))
    for sub in ("root", "home", "work"):
        (tmp / sub).mkdir()
    env = _lab_environment(tmp)
    # Without this the "Would you like to get notified about Jupyter news?" toast pops up
    # over the notebook in screenshots.
    labconfig = tmp / "config" / "labconfig"
    labconfig.mkdir(parents=True)
    (labconfig / "page_config.json").write_text(
        '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}')
    port = _free_port()
    command = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0",  # a lost race for the port fails instead of moving
        f"--IdentityProvider.token={TOKEN}",
        f"--ServerApp.root_dir={tmp / 'root'}",
        "--ServerApp.terminals_enabled=False",
        "--expose-app-in-browser",
        *LAB_OFFLINE,
    ]
    with open(tmp / "server.log", "wb") as log:
        proc = subprocess.Popen(command, env=env, cwd=tmp / "root", stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    lab = Lab(proc, f"http://127.0.0.1:{port}", tmp, 0.0)
    request = urllib.request.Request(f"{lab.url}/api/status",
                                     headers={"Authorization": f"token {TOKEN}"})
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                response.read()
            lab.started_in = time.monotonic() - t0
            return lab
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            tail = lab.log_tail()
            stop_lab(lab)
            raise RuntimeError(f"JupyterLab did not start within {timeout:.0f} s:\n{tail}")
        time.sleep(0.1)


def stop_lab(lab: Lab, keep_log: Path | None = None) -> None:
    """Stop the server (SIGTERM lets it shut its kernels down), then remove its files."""
    if lab.proc.poll() is None:
        lab.proc.terminate()
        try:
            lab.proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
    try:  # whatever is left of the server's process group: kernels it did not stop
        os.killpg(lab.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if lab.proc.poll() is None:
        lab.proc.wait(5)
    if keep_log is not None and lab.log.exists():
        keep_log.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lab.log, keep_log)
    shutil.rmtree(lab.tmp, ignore_errors=True)


@contextmanager
def jupyter_lab(timeout: float = 60.0, keep_log: Path | None = None) -> Iterator[Lab]:
    """A JupyterLab server for the duration of the block; `keep_log` saves its log there."""
    lab = start_lab(timeout)
    try:
        yield lab
    finally:
        stop_lab(lab, keep_log)


@contextmanager
def chromium_page(width: int = 1280, height: int = 2000, timeout: float = 30.0) -> Iterator[Any]:
    """A Playwright page in headless Chromium. JupyterLab's page is exactly as big as the
    window, so the window is tall enough for a whole short notebook in one screenshot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS, timeout=timeout * 1000)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout * 1000)
            page.set_default_navigation_timeout(timeout * 1000)
            yield page
        finally:
            browser.close()


def open_notebook(page: Any, lab: Lab, name: str, timeout: float = 60.0) -> None:
    """Open `name` (relative to the server root) and wait until its kernel is idle."""
    page.goto(f"{lab.url}/lab/tree/{name}?token={TOKEN}")
    # The panel of this document, once the app shell has it; kept as window.__panel.
    wait_in_page(page, """name => {
        const app = window.jupyterapp;
        if (!app || !app.shell) return false;
        for (const w of app.shell.widgets('main')) {
            if (w.context && w.context.path === name && w.sessionContext) {
                window.__panel = w;
                return true;
            }
        }
        return false;
    }""", arg=name, timeout=timeout, what=f"JupyterLab to open {name}", lab=lab)
    page.evaluate("""async () => {
        await window.__panel.context.ready;
        await window.__panel.sessionContext.ready;
    }""")
    wait_kernel_idle(page, timeout, lab)


def wait_kernel_idle(page: Any, timeout: float = 60.0, lab: Lab | None = None) -> None:
    """Wait for the open notebook's kernel to be idle (it is "unknown", then "starting",
    for a while after the session is ready)."""
    wait_in_page(page, "() => window.__panel.sessionContext.session?.kernel?.status === 'idle'",
             timeout=timeout, what="the kernel to be idle", lab=lab)


def run_all_cells(page: Any) -> None:
    """Start running every cell of the open notebook; does not wait for them. The outcome
    of the command lands in window.__ran: true once all cells ran without error."""
    page.evaluate("""() => {
        window.__ran = undefined;
        window.jupyterapp.shell.activateById(window.__panel.id);
        window.jupyterapp.commands.execute('notebook:run-all-cells').then(
            result => { window.__ran = result; },
            error => { window.__ran = 'error: ' + error; });
    }""")


def wait_in_page(page: Any, predicate: str, *, what: str, timeout: float = 30.0, arg: Any = None,
             lab: Lab | None = None) -> Any:
    """Wait until the JavaScript function `predicate` (called with `arg`) returns something
    truthy, and return it; after `timeout` seconds fail with what the notebook shows."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        handle = page.wait_for_function(predicate, arg=arg, timeout=timeout * 1000,
                                        polling=100)
        return handle.json_value()
    except PlaywrightTimeout:
        raise AssertionError(
            f"timed out after {timeout:.0f} s waiting for {what}\n"
            f"--- notebook as shown ---\n{notebook_text(page)}\n"
            + (f"--- server log (end) ---\n{lab.log_tail()}" if lab else "")) from None


def notebook_text(page: Any) -> str:
    """The visible text of the notebook area, for failure messages."""
    try:
        return page.evaluate(
            "() => document.querySelector('.jp-Notebook')?.innerText ?? '(no notebook)'")
    except Exception as error:  # the page may be gone; this is only a diagnostic
        return f"(cannot read the page: {error})"


def screenshot(page: Any, path: Path) -> str | None:
    """Save what the browser shows as a PNG at `path`; return why that failed, or None.

    It does not raise: it is taken in a `finally`, where raising would hide the failure that
    got there. The caller asserts on the answer once the real checks had their say.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a file left by an earlier run must not pass for this one
    try:
        page.screenshot(path=str(path), timeout=15_000)
    except Exception as error:
        return f"screenshot {path} failed: {error}"
    if not path.is_file() or path.stat().st_size == 0:
        return f"screenshot {path} is missing or empty"
    if not path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"):
        return f"screenshot {path} is not a PNG"
    return None
