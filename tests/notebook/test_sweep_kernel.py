"""`%%remote --map`: sweeps through a real kernel on the embedded localhost host (process
elements, as many at once as the host has cores)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from helpers.kernel import CLIENT, Kernel


def cell(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def test_names_come_back_as_lists_in_the_order_of_the_values(kernel: Kernel) -> None:
    kernel.run("offset = 100\nimport numpy as np\nweights = np.arange(1000.0)")
    out = kernel.run(cell("""
        %%remote --map seed=range(7)
        import math
        score = offset + seed * 2 + weights[seed]
        label = f"s{seed}"
    """))
    assert out.ok
    assert kernel.value("[float(v) for v in score]") == [100.0 + 3 * s for s in range(7)]
    assert kernel.value("label") == [f"s{s}" for s in range(7)]
    assert kernel.value("math.pi") > 3  # an import binds the module, not a list of it
    assert kernel.value("seed if 'seed' in dir() else None") is None  # not bound here
    sweep = kernel.value(f"{CLIENT}.store.list()[0].sweep")
    assert sweep is not None
    assert kernel.value(f"len({CLIENT}.sweep({sweep!r}).elements)") == 7


def test_product_zip_and_keyed(kernel: Kernel) -> None:
    kernel.run(cell("""
        %%remote --map a=[1, 2] --map b=["x", "y z"]
        pair = f"{a}{b}"
    """))
    assert kernel.value("pair") == ["1x", "1y z", "2x", "2y z"]
    kernel.run(cell("""
        %%remote --map a=[1, 2, 3] --map b=[10, 20, 30] --zip
        total = a + b
    """))
    assert kernel.value("total") == [11, 22, 33]
    kernel.run(cell("""
        %%remote --map 'lr=[0.1, 0.01]' --keyed
        steps = int(1 / lr)
    """))
    assert kernel.value("steps") == {0.1: 10, 0.01: 100}


def test_a_failing_element_raises_at_the_end_after_loading_the_others(kernel: Kernel) -> None:
    out = kernel.run(cell("""
        %%remote --map n=range(5)
        if n == 3:
            raise ValueError(f"bad {n}")
        if n == 4:
            import os
            os._exit(7)
        inverse = 1 / (n + 1)
    """), allow_error=True)
    assert out.error is not None
    assert out.error["ename"] == "SweepFailedError"
    text = "\n".join(out.error["traceback"])
    assert "2 of 5 elements" in text and "3 (n=3): ValueError: bad 3" in text
    assert "4 (n=4)" in text
    assert kernel.value("inverse[:3]") == [1.0, 0.5, 1 / 3]
    assert kernel.value("type(inverse[3]).__name__") == "ValueError"
    assert kernel.value("isinstance(inverse[3], ValueError)")
    # --partial: no exception, the failed places hold the exceptions
    out = kernel.run(cell("""
        %%remote --map n=range(5) --partial
        if n == 3:
            raise ValueError(f"bad {n}")
        half = n / 2
    """))
    assert out.ok
    assert kernel.value("half[4]") == 2.0
    assert kernel.value("isinstance(half[3], ValueError)")


def test_an_identical_sweep_reuses_completed_elements_and_retry_runs_the_failed(
        kernel: Kernel) -> None:
    code = cell("""
        %%remote --map k=range(4) --partial
        import os
        if k == 2 and not os.path.exists(flag):
            raise RuntimeError("not yet")
        pid = os.getpid()
    """)
    kernel.run(f"flag = {str(Path(kernel.cwd) / 'retry-flag')!r}")
    kernel.run(code)
    first = kernel.value("[p if isinstance(p, int) else None for p in pid]")
    assert first[2] is None and all(isinstance(p, int) for p in first[:2] + first[3:])
    out = kernel.run(code)  # identical: completed elements reused, the failed one runs again
    assert "3 of 4 elements reuse" in out.stdout
    second = kernel.value("[p if isinstance(p, int) else None for p in pid]")
    assert second[:2] == first[:2] and second[3] == first[3] and second[2] is None
    sweep = kernel.value(f"{CLIENT}.store.list()[0].sweep")
    (Path(kernel.cwd) / "retry-flag").write_text("")
    out = kernel.run(f"%remote_retry {sweep}")
    assert "1 element" in out.stdout
    kernel.run(f"%remote_fetch {sweep}")
    third = kernel.value("pid")
    assert third[:2] == first[:2] and isinstance(third[2], int)


def test_bad_map_expressions_are_refused_before_anything_is_sent(kernel: Kernel) -> None:
    before = kernel.value(f"len({CLIENT}.store.list())")
    for line, words in [
        ("--map x=5", "not a sequence"),
        ("--map x=[]", "no values"),
        ("--map x='abc'", "letter by letter"),
        ("--map x=undefined_name", "NameError"),
        ("--map x=[1,", "not a Python expression"),
        ("--map score=[1, 2]", "assigns this name itself"),
        ("--map x=[1, 2] --map y=[1] --zip", "as many"),
        ("--map x=[[1], [2]] --keyed", "not hashable"),
        ("--zip", "go with --map"),
    ]:
        out = kernel.run(f"%%remote {line}\nscore = x", allow_error=True)
        assert out.error is not None, line
        assert words in "\n".join(out.error["traceback"]), (line, out.error["traceback"])
    assert kernel.value(f"len({CLIENT}.store.list())") == before


def test_a_thousand_elements_one_view_within_the_message_budget(tmp_path: Path) -> None:
    """A 1,000-element sweep on localhost through a kernel that renders widgets: one view
    (a fixed handful of widgets), the comm messages it sends bounded per second by the
    shared budget, its grid holding every element, the names back in order."""
    import time as clock

    from helpers.kernel import start_kernel

    kernel = start_kernel(tmp_path, REMOTE_MAGIC_DISPLAY="widget")
    try:
        started = clock.monotonic()
        out = kernel.run("%%remote --map i=range(1000)\nsquare = i * i", timeout=600)
        took = clock.monotonic() - started
        assert kernel.value("square[::250]") == [0, 62500, 250000, 562500]
        opened = out.of_type("comm_open")
        assert len(opened) <= 30  # one view: a fixed set of widget models (with their
        # layouts and styles), whatever the number of elements
        sent = [m["header"]["date"].timestamp() for m in out.of_type("comm_msg")]
        per_second: dict[int, int] = {}
        for at in sent:
            per_second[int(at)] = per_second.get(int(at), 0) + 1
        assert max(per_second.values()) <= 100, per_second
        assert len(sent) <= 60 * took + 20
        values = [str(m["content"]["data"].get("state", {}).get("value", ""))
                  for m in [*opened, *out.of_type("comm_msg")]]
        grids = [v for v in values if "rm-sweep-cells" in v]
        assert grids and 'title="#999 i=999: completed' in grids[-1]
        assert grids[-1].count("<i ") == 1000
    finally:
        kernel.shutdown()


def test_the_sweep_view_shows_output_and_its_cancel_ends_the_sweep(tmp_path: Path) -> None:
    """A --nowait sweep in a kernel that renders widgets: the view shows the last lines of a
    running element, and a click on its Cancel (a real comm message) cancels every element
    that has not ended; the next cell loads the sweep and says so."""
    import time as clock

    from helpers.kernel import start_kernel
    from test_widgets import Models

    kernel = start_kernel(tmp_path, REMOTE_MAGIC_DISPLAY="widget")
    try:
        out = kernel.run("%%remote --nowait --map i=range(6)\nimport time\n"
                         "print(f'element {i} is up', flush=True)\ntime.sleep(60)\ndone = i")
        models = Models()
        models.feed(out.messages)
        button_id, button = models.with_class("rm-sweep-cancel")
        assert button["disabled"] is False  # the kernel is free: a click works
        output_id, _ = models.with_class("rm-sweep-output")

        def shows_output(msg: dict) -> bool:
            content = msg["content"]
            return (msg["msg_type"] == "comm_msg" and content.get("comm_id") == output_id
                    and "is up" in str(content["data"].get("state", {}).get("value", "")))

        assert any(shows_output(m) for m in kernel.drain(30, until=shows_output))
        click = kernel.client.session.msg(
            "comm_msg", {"comm_id": button_id,
                         "data": {"method": "custom", "content": {"event": "click"}}})
        kernel.client.shell_channel.send(click)
        deadline = clock.monotonic() + 60
        said = ""  # the cell run after the sweep ended (here, one of these) says how it went
        while clock.monotonic() < deadline and "6 elements" not in said:
            said += kernel.run("pass").stderr
            clock.sleep(0.5)
        assert "6 elements, 6 cancelled" in said and "%remote_retry" in said
        assert kernel.value(f"[r.state for r in {CLIENT}.store.list() if r.sweep]") == \
            ["cancelled"] * 6
        assert kernel.value("all(isinstance(d, Exception) for d in done)")
    finally:
        kernel.shutdown()
