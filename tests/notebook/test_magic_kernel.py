"""%%remote through a real ipykernel on the embedded localhost host."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from helpers.kernel import CLIENT, Kernel


def cell(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def test_values_come_back_and_last_expression_is_displayed(kernel: Kernel) -> None:
    kernel.run("x = 21\nscale = {'k': 2}")
    out = kernel.run(cell("""
        %%remote
        y = x * scale['k']
        print("computed", y)
        y + 0.5
    """))
    assert "computed 42" in out.stdout
    assert out.result["text/plain"] == "42.5"
    assert kernel.value("y") == 42


def test_inputs_found_in_functions_lambdas_comprehensions_fstrings(kernel: Kernel) -> None:
    kernel.run("import math as m\nbase = 3\noffset = 1\nwidth = 6\nitems = [1, 2, 3]\n"
               "def helper(v):\n    return v * base")
    out = kernel.run(cell("""
        %%remote
        def f(v):
            return helper(v) + offset
        g = lambda v: v - offset
        squares = [f(i) for i in items]
        label = f"{m.pi:.{width}f}"
        total = sum(g(s) for s in squares)
    """))
    assert out.ok
    assert kernel.value("squares") == [4, 7, 10]
    assert kernel.value("label") == "3.141593"
    assert kernel.value("total") == 18
    assert kernel.value("f(1)") == 4  # a function defined remotely works here


def test_outputs_cover_every_binding_and_skip_private(kernel: Kernel) -> None:
    kernel.run(cell("""
        %%remote
        import json as js
        a, (b, *c) = 1, (2, 3, 4)
        counter = 0
        counter += 5
        for item in range(3):
            pass
        class Point:
            def __init__(self, x):
                self.x = x
        p = Point(7)
        if (w := 9) > 1:
            pass
        _hidden = 1
    """))
    got = kernel.value("(js.__name__, a, b, c, counter, item, p.x, w, Point.__name__)")
    assert got == ("json", 1, 2, [3, 4], 5, 2, 7, 9, "Point")
    assert kernel.value("'_hidden' in dir()") is False


def test_del_in_the_cell_deletes_here_too(kernel: Kernel) -> None:
    kernel.run("doomed = 1\nsurvivor = 2")
    kernel.run("%%remote\ndel doomed\nsurvivor += 1")
    assert kernel.value("('doomed' in dir(), survivor)") == (False, 3)


def test_dash_o_restricts_and_dash_i_adds(kernel: Kernel) -> None:
    kernel.run("sent = 5\nkeep = 'old'")
    kernel.run(cell("""
        %%remote -o only -i sent
        only = globals()['sent'] * 2
        keep = 'new'
    """))
    assert kernel.value("(only, keep)") == (10, "old")


def test_displays_and_figures_come_back(kernel: Kernel) -> None:
    out = kernel.run(cell("""
        %%remote
        from IPython.display import HTML, Markdown
        import matplotlib.pyplot as plt
        display(HTML("<b>bold</b>"))
        from IPython.display import display as shown
        shown(Markdown("*imported display*"))
        plt.plot([1, 2, 3])
        plt.title("once")
    """))
    data = [m["content"]["data"] for m in out.of_type("display_data")]
    assert any(d.get("text/html") == "<b>bold</b>" for d in data)
    assert any(d.get("text/markdown") == "*imported display*" for d in data)
    assert sum("image/png" in d for d in data) == 1  # the figure, shown once
    assert out.result["text/plain"].startswith("Text(")


def test_output_streams_while_the_task_runs(kernel: Kernel) -> None:
    out = kernel.run(cell("""
        %%remote
        import time
        print("first", flush=True)
        time.sleep(2)
        print("second")
    """))
    streams = [m for m in out.of_type("stream") if m["content"]["name"] == "stdout"]
    first = next(m for m in streams if "first" in m["content"]["text"])
    second = next(m for m in streams if "second" in m["content"]["text"])
    assert second["received"] - first["received"] > 1.0


def test_remote_exception_shows_remote_traceback_and_type(kernel: Kernel) -> None:
    out = kernel.run(cell("""
        %%remote
        a = 1
        b = a / 0
    """), allow_error=True)
    error = out.error
    assert error["ename"] == "ZeroDivisionError"
    text = "\n".join(error["traceback"])
    assert "<remote-cell" in text and "line 2" in text and "b = a / 0" in text
    assert "remote_magic/" not in text  # none of the package's own frames
    caught = kernel.run(cell("""
        try:
            get_ipython().run_cell_magic("remote", "", "1/0")
        except ZeroDivisionError as exc:
            print("caught", type(exc).__name__)
    """))
    assert "caught ZeroDivisionError" in caught.stdout


def test_unpicklable_input_is_refused_before_submission(kernel: Kernel) -> None:
    kernel.run("import threading\nlock = threading.Lock()")
    before = kernel.value(f"len({CLIENT}.store.list())")
    out = kernel.run("%%remote\nwith lock:\n    z = 1", allow_error=True)
    assert out.error["ename"] == "SerializationError"
    assert "'lock'" in out.error["evalue"] and "_thread.lock" in out.error["evalue"]
    assert len(out.error["traceback"]) == 1  # a message, not a traceback through the package
    after = kernel.value(f"len({CLIENT}.store.list())")
    assert after == before


def test_unknown_host_lists_known_hosts(kernel: Kernel) -> None:
    out = kernel.run("%%remote -q nowhere\nx = 1", allow_error=True)
    assert out.error["ename"] == "UnknownHostError"
    assert "nowhere" in out.error["evalue"] and "localhost" in out.error["evalue"]


def test_broken_config_names_file_and_key(kernel: Kernel, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("hosts:\n  hpc:\n    adress: me@example\n")
    out = kernel.run(cell(f"""
        import os
        _saved = os.environ['REMOTE_MAGIC_CONFIG']
        os.environ['REMOTE_MAGIC_CONFIG'] = {str(bad)!r}
        try:
            get_ipython().run_cell_magic('remote', '', 'x = 1')
        finally:
            os.environ['REMOTE_MAGIC_CONFIG'] = _saved
    """), allow_error=True)
    assert out.error["ename"] == "ConfigError"
    assert str(bad) in out.error["evalue"] and "hosts.hpc.adress" in out.error["evalue"]
    assert "address" in out.error["evalue"]


def test_bad_resource_option_is_refused(kernel: Kernel) -> None:
    out = kernel.run("%%remote --walltime soon\nx = 1", allow_error=True)
    assert out.error["ename"] == "OptionError"
    assert "walltime" in out.error["evalue"] and "1:00:00" in out.error["evalue"]


def test_ipython_syntax_is_refused_clearly(kernel: Kernel) -> None:
    out = kernel.run("%%remote\n!ls", allow_error=True)
    assert out.error["ename"] == "CaptureError"
    assert "subprocess" in out.error["evalue"]


def test_identical_task_reuses_results_unless_rerun(kernel: Kernel) -> None:
    code = "%%remote{}\nimport os\nstamp = os.getpid()"
    first = kernel.run(code.format(""))
    assert "identical" not in first.stdout
    pid = kernel.value("stamp")
    again = kernel.run(code.format(""))
    assert "identical task" in again.stdout and "--rerun" in again.stdout
    assert kernel.value("stamp") == pid
    kernel.run(code.format(" --rerun"))
    assert kernel.value("stamp") != pid


def test_failed_task_runs_again_without_rerun(kernel: Kernel) -> None:
    kernel.run("attempts_path = str(__import__('pathlib').Path.cwd() / 'attempts')")
    failing = ("%%remote\nwith open(attempts_path, 'a') as f:\n    f.write('x')\n"
               "raise RuntimeError('flaky')")
    for _ in range(2):
        out = kernel.run(failing, allow_error=True)
        assert out.error["ename"] == "RuntimeError" and "identical" not in out.stdout
    assert (kernel.root / "attempts").read_text() == "xx"


def test_help_is_generated_from_the_options(kernel: Kernel) -> None:
    out = kernel.run("%%remote?")
    pages = [p for p in out.reply["content"].get("payload", []) if p.get("source") == "page"]
    text = pages[0]["data"]["text/plain"]
    for option in ("--queue", "--inputs", "--outputs", "--nowait", "--rerun", "--walltime"):
        assert option in text


def test_status_log_and_purge(kernel: Kernel) -> None:
    kernel.run("%%remote --name logged\nprint('to the log')\nlogged = 1")
    task_id = kernel.value(f"{CLIENT}.store.list()[0].id")
    status = kernel.run("%remote_status --all")
    table = status.of_type("display_data")[0]["content"]["data"]
    assert task_id in table["text/plain"] and "logged" in table["text/html"]
    assert "to the log" in kernel.run(f"%remote_log {task_id[:6]}").stdout
    task_dir = kernel.root / "work" / "tasks" / task_id
    assert task_dir.is_dir()
    assert "removed" in kernel.run(f"%remote_purge {task_id}").stdout
    assert not task_dir.exists()
    gone = kernel.run(f"%remote_log {task_id}", allow_error=True)
    assert gone.error["ename"] == "TaskNotFoundError"


def test_nowait_results_land_at_the_next_cell(kernel: Kernel) -> None:
    out = kernel.run("%%remote --nowait\nimport time\ntime.sleep(1)\nlater = 'arrived'")
    assert "background" in out.stdout
    assert kernel.value("'later' in dir()") is False  # not mid-way, not before it ends
    import time

    time.sleep(2.5)
    notice = kernel.run("pass")
    assert "loaded later" in notice.stdout
    assert len(notice.stdout.splitlines()) == 1, notice.stdout  # a notice, not a report
    assert not notice.stderr
    assert kernel.value("later") == "arrived"


def test_a_failed_nowait_task_is_one_line_at_the_next_cell(kernel: Kernel) -> None:
    import time

    kernel.run("%%remote --nowait --name doomed\nhalf = 'done'\nimport time\n"
               "time.sleep(0.5)\nratio = 1 / 0")
    task_id = kernel.value(f"{CLIENT}.store.list()[0].id")
    time.sleep(2.5)
    notice = kernel.run("pass")  # the cell itself runs fine: the notice is beside it
    assert notice.ok and not notice.stdout
    lines = notice.stderr.splitlines()
    assert len(lines) == 1, notice.stderr  # no traceback dumped into an unrelated cell
    assert task_id in lines[0] and "failed" in lines[0]
    assert "ZeroDivisionError: division by zero" in lines[0]
    assert f"%remote_fetch {task_id}" in lines[0] and f"%remote_log {task_id}" in lines[0]
    assert "Traceback" not in notice.stderr
    # and what it points at does show the traceback
    fetched = kernel.run(f"%remote_fetch {task_id}", allow_error=True)
    assert fetched.error["ename"] == "ZeroDivisionError"
    assert "ratio = 1 / 0" in "\n".join(fetched.error["traceback"])


def test_nowait_results_never_land_in_the_middle_of_a_cell(kernel: Kernel) -> None:
    kernel.run("%%remote --nowait\nimport time\ntime.sleep(1)\nmidway = 'arrived'")
    during = kernel.run("import time\ntime.sleep(3)  # the task ends meanwhile\n"
                        "print('inside:', 'midway' in dir())")
    assert "inside: False" in during.stdout
    assert "loaded midway" in kernel.run("pass").stdout
    assert kernel.value("midway") == "arrived"


def test_kill_cancels_a_running_task(kernel: Kernel) -> None:
    kernel.run("%%remote --nowait --name sleeper\nimport time\ntime.sleep(60)\nnever = 1")
    task_id = kernel.value(f"{CLIENT}.store.list()[0].id")
    killed = kernel.run(f"%remote_kill {task_id}").stdout
    assert f"{task_id}: cancelling" in killed or f"{task_id}: cancelled" in killed  # (see below)
    fetched = kernel.run(f"%remote_fetch {task_id}", allow_error=True, timeout=30)
    assert fetched.error["ename"] == "TaskFailedError"
    assert "cancelled" in fetched.error["evalue"]


def test_kill_all_cancels_every_unfinished_task(kernel: Kernel) -> None:
    for n in range(2):
        kernel.run(f"%%remote --nowait\nimport time\ntime.sleep(60)\nnever = {n + 10}")
    out = kernel.run("%remote_kill --all -q localhost")
    # "cancelled" at once for a task its runner had not been handed yet (it never runs)
    assert out.stdout.count(": cancelling") + out.stdout.count(": cancelled") == 2
    kernel.run("import time; time.sleep(1)")
    states = kernel.value(f"[r.state for r in {CLIENT}"
                          ".status()[:2]]")
    assert states == ["cancelled", "cancelled"]


def test_hosts_lists_and_tests_localhost(kernel: Kernel) -> None:
    out = kernel.run("%remote_hosts --test")
    assert "localhost" in out.stdout and str(kernel.root / "hosts.yaml") in out.stdout
    assert "[ok] localhost: agent starts, Python matches" in out.stdout
    assert "FAIL" not in out.stdout


def test_killed_process_is_reported_failed(kernel: Kernel) -> None:
    kernel.run("%%remote --nowait\nimport time\ntime.sleep(60)\nnever = 2")
    task_id = kernel.value(f"{CLIENT}.store.list()[0].id")
    pids = kernel.root / "work" / "tasks" / task_id / "pids.json"
    import os
    import signal
    import time

    deadline = time.monotonic() + 10
    while not pids.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(json.loads(pids.read_text())["runner"], signal.SIGKILL)
    fetched = kernel.run(f"%remote_fetch {task_id}", allow_error=True, timeout=30)
    assert fetched.error["ename"] == "TaskFailedError"
    assert "failed" in fetched.error["evalue"] and "SIGKILL" in fetched.error["evalue"]


def test_interrupt_detaches_and_results_can_be_fetched(kernel: Kernel) -> None:
    import time

    msg_id = kernel.start("%%remote --name slow\nimport time\ntime.sleep(3)\nslow = 'done'")
    time.sleep(1.5)
    kernel.manager.interrupt_kernel()
    detached = kernel.collect(msg_id, timeout=30)
    task_id = kernel.value(f"{CLIENT}.store.list()[0].id")
    assert f"Detached from task {task_id}" in detached.stdout
    assert f"%remote_fetch {task_id}" in detached.stdout
    assert f"%remote_kill {task_id}" in detached.stdout
    assert kernel.value("'slow' in dir()") is False
    out = kernel.run(f"%remote_fetch {task_id}", timeout=30)
    assert out.ok
    assert kernel.value("slow") == "done"
