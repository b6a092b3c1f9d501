"""The task view as a user sees it: JupyterLab in a real (headless) browser.

The notebook tests/notebooks/browser_progress.ipynb runs a `%%remote` cell that reports
progress and prints lines, then uses its result in the next cell. Here it runs in JupyterLab
in Chromium, and the rendered page must show the task's widget (not its text repr): its last
output lines while the task runs, then finished with a full progress bar, the whole output
in the cell below it, and the next cell's output.

Needs Debian's chromium (scripts/system-deps.sh) and the `test` extra (jupyterlab,
playwright); it skips without either, except in CI (CI set), where a missing browser is an
error. The kernel is not told it has a widget front end: it must find out. A screenshot of
the notebook, taken whether the checks pass or not, lands in
tests/artifacts/browser-progress.png, next to the server's log; without it the test fails.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import pytest
from helpers import TESTS
from helpers.browser import (
    ARTIFACTS,
    browser_available,
    chromium_page,
    jupyter_lab,
    open_notebook,
    run_all_cells,
    screenshot,
    wait_in_page,
)

UNAVAILABLE = browser_available()
if UNAVAILABLE is not None and os.environ.get("CI"):
    # CI installs the browser (scripts/test.sh): a skip there would hide a broken set-up.
    raise RuntimeError(f"the browser test cannot run in CI: {UNAVAILABLE}")
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")

NOTEBOOK = TESTS / "notebooks" / "browser_progress.ipynb"
SCREENSHOT = ARTIFACTS / "browser-progress.png"
SERVER_LOG = ARTIFACTS / "browser-progress-server.log"

# Everything the checks look at, read from the rendered page in one go.
READ_PAGE = """() => {
    const view = document.querySelector('.remote-magic-task');
    const find = s => view ? view.querySelector(s) : null;
    const bar = find('.rm-progress .progress-bar') || find('.widget-hprogress .progress-bar');
    const state = find('.rm-state');
    const outputs = [...document.querySelectorAll('.jp-OutputArea-output')];
    return {
        view: !!view,
        state: state ? state.textContent.trim() : null,
        state_class: state ? state.className : null,
        bar_width: bar ? bar.style.width : null,
        message: find('.rm-message')?.innerText ?? null,
        header: find('.rm-header')?.innerText ?? null,
        output: find('.rm-output')?.innerText ?? null,
        outputs: outputs.map(o => o.innerText.trim()),
        ran: window.__ran === undefined ? null : window.__ran,
        seen: window.__seen || [],
        tails: window.__tails || [],
    };
}"""

# Record each new (state, progress) the view shows while it runs: proof of live updates; and
# each new tail of output it shows, with the state it showed then.
SAMPLE_VIEW = """() => {
    window.__seen = [];
    window.__tails = [];
    window.__sampler = setInterval(() => {
        const view = document.querySelector('.remote-magic-task');
        if (!view) return;
        const state = view.querySelector('.rm-state');
        const bar = view.querySelector('.progress-bar');
        const now = (state ? state.textContent.trim() : '?') + ' ' + (bar ? bar.style.width : '');
        if (window.__seen[window.__seen.length - 1] !== now) window.__seen.push(now);
        const tail = view.querySelector('.rm-output')?.innerText.trim() ?? '';
        const last = window.__tails[window.__tails.length - 1];
        if (tail && (!last || last.tail !== tail))
            window.__tails.push({state: state ? state.textContent.trim() : '?', tail: tail});
    }, 25);
}"""


def finished(page: Any) -> bool:
    """All cells ran, the view shows the completed task, and the last cell printed."""
    d = page.evaluate(READ_PAGE)
    return (d["ran"] is not None and d["state"] == "completed" and d["bar_width"] == "100%"
            and any("line 10" in text for text in d["outputs"])
            and any("answer is 42" in text for text in d["outputs"]))


def test_task_widget_renders_live_in_jupyterlab() -> None:
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    shot_error: str | None = "no screenshot taken"
    with jupyter_lab(keep_log=SERVER_LOG) as lab:
        timings["server"] = lab.started_in
        shutil.copyfile(NOTEBOOK, lab.root / NOTEBOOK.name)
        with chromium_page() as page:
            try:
                t1 = time.monotonic()
                open_notebook(page, lab, NOTEBOOK.name)
                timings["kernel idle"] = time.monotonic() - t1
                page.evaluate(SAMPLE_VIEW)
                t1 = time.monotonic()
                run_all_cells(page)
                wait_in_page(page, "() => !!document.querySelector('.remote-magic-task')",
                         timeout=30, lab=lab,
                         what="the task view to render as a widget (.remote-magic-task)")
                wait_in_page(page, """() => document.querySelector(
                             '.remote-magic-task .rm-state')?.textContent.trim() === 'completed'""",
                         timeout=60, lab=lab, what="the task view to show state 'completed'")
                # the bar, the output and the next cell may arrive a moment after the state
                deadline = time.monotonic() + 15
                while not finished(page) and time.monotonic() < deadline:
                    time.sleep(0.1)
                timings["cells"] = time.monotonic() - t1
                page.evaluate("() => clearInterval(window.__sampler)")
                d = page.evaluate(READ_PAGE)
            finally:
                shot_error = screenshot(page, SCREENSHOT)
    timings["total"] = time.monotonic() - t0
    print("browser test timings (s):", {k: round(v, 1) for k, v in timings.items()})
    print("view states seen:", d["seen"])
    print("view tails seen:", [f"{t['state']}: {t['tail'][-30:]!r}" for t in d["tails"]])

    assert d["view"], d
    assert d["state"] == "completed" and "rm-state-completed" in d["state_class"], d
    assert d["bar_width"] == "100%", d
    assert "10/10 (100%)" in d["message"], d
    assert "loaded answer" in d["header"] and "end to end" in d["header"], d
    # while the task ran, the view showed its last output lines, next to the state and bar
    running_tails = [t["tail"] for t in d["tails"] if t["state"] == "running"]
    assert any("line " in tail for tail in running_tails), d
    assert all(len(tail.splitlines()) <= 6 for tail in running_tails), d  # the last lines only
    # the waiting cell streamed the whole output under the view; once the task ended the view
    # stops repeating its last lines
    assert any("line 1\n" in text and "line 10" in text for text in d["outputs"]), d
    assert not d["output"], d
    assert any("answer is 42" in text for text in d["outputs"]), d
    assert not any(text.startswith("VBox(") for text in d["outputs"]), d  # no text repr
    assert d["ran"] is True, d  # every cell ran without error
    # the view was on screen while the task ran, not only drawn at the end
    assert any(not seen.startswith("completed") for seen in d["seen"]), d
    assert shot_error is None, shot_error
    assert SCREENSHOT.stat().st_size > 0
