"""Each fidelity mechanism through a real kernel: a remote cell leaves the notebook as the same
cell run locally would (values changed in place, functions, settings, displays, errors, files).
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.hosts import ssh_host
from helpers.kernel import Kernel, start_kernel


@pytest.fixture(scope="module")
def nb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    root = tmp_path_factory.mktemp("fidelity")
    kernel = start_kernel(root, REMOTE_MAGIC_DISPLAY="widget")
    kernel.root = root  # type: ignore[attr-defined]
    yield kernel
    kernel.shutdown()


def remote(kernel: Kernel, code: str, line: str = "", **options: Any) -> Any:
    return kernel.run(f"%%remote {line}\n" + textwrap.dedent(code), **options)


def shown(outcome: Any) -> list[tuple[str, Any]]:
    """What the cell's output area received, in order, without our own live view."""
    seen: list[tuple[str, Any]] = []
    for message in outcome.messages:
        kind, content = message["msg_type"], message["content"]
        if kind == "stream":
            if seen and seen[-1][0] == content["name"]:
                seen[-1] = (content["name"], seen[-1][1] + content["text"])
            else:
                seen.append((content["name"], content["text"]))
        elif kind in ("display_data", "execute_result", "update_display_data"):
            data = content["data"]
            if "application/vnd.jupyter.widget-view+json" not in data:
                seen.append((kind, data.get("text/plain")))
        elif kind == "clear_output":
            seen.append(("clear", content["wait"]))
    return seen


def test_inputs_changed_in_place_change_here_and_aliases_see_it(nb: Kernel) -> None:
    nb.run(textwrap.dedent("""\
        import numpy as np, pandas as pd
        from sklearn.linear_model import LinearRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        L = [3, 1, 2]; M = L
        a = np.zeros(4); view = a[:2]
        df = pd.DataFrame({"x": [1, 2]}); same_df = df
        scaler = StandardScaler(); pipe = make_pipeline(scaler, LinearRegression())
        rng = np.random.default_rng(0)
        box = {"list": L}"""))
    remote(nb, """\
        L.sort()
        a[1] = 7
        df["y"] = df.x * 10
        pipe.fit([[1], [2], [3]], [1, 2, 3])
        draw = rng.random()""")
    assert nb.value("(L, M is L, box['list'] is L)") == ([1, 2, 3], True, True)
    assert nb.value("(view.tolist(), same_df is df, list(df.columns))") == \
        ([0.0, 7.0], True, ["x", "y"])
    assert nb.value("(hasattr(scaler, 'mean_'), pipe.steps[0][1] is scaler)") == (True, True)
    local = nb.value("float(np.random.default_rng(0).random(2)[1])")
    assert nb.value("float(rng.random())") == local  # the generator moved on, as locally


def test_an_object_the_cell_puts_somewhere_stays_the_notebooks_own(nb: Kernel) -> None:
    nb.run("items = [1, 2]")
    remote(nb, "registry = {'items': items}")
    assert nb.value("registry['items'] is items") is True


def test_what_cannot_change_in_place_is_rebound_and_said(nb: Kernel) -> None:
    nb.run("pair = (1, [2])")
    out = remote(nb, "pair[1].append(3)")
    assert nb.value("pair") == (1, [2, 3])
    views = " ".join(str(m["content"]) for m in out.of_type("comm_msg"))
    assert "pair was changed by the task and rebound here" in views


def test_functions_look_up_globals_in_the_notebook(nb: Kernel) -> None:
    remote(nb, """\
        def doubled():
            return scale * 2

        class Scaler:
            def apply(self, x):
                return x * scale""")
    nb.run("scale = 10")
    assert nb.value("(doubled(), Scaler().apply(3))") == (20, 30)
    nb.run("def offset_by():\n    return offset")
    remote(nb, "offset = 5\nseen = offset_by()")  # a notebook function sees the task's global
    assert nb.value("seen") == 5


def test_names_used_inside_query_strings_are_sent(nb: Kernel) -> None:
    nb.run("import pandas as pd\nframe = pd.DataFrame({'a': [1, 5, 9]})\nlimit = 4")
    remote(nb, "big = frame.query('a > @limit')")
    assert nb.value("big.a.tolist()") == [5, 9]
    nb.run("condition = 'a > @limit'")  # the expression itself in a notebook variable
    remote(nb, "bigger = frame.query(condition)")
    assert nb.value("bigger.a.tolist()") == [5, 9]
    out = remote(nb, "n = eval(''.join(['li', 'mit']))", allow_error=True)
    assert out.error["ename"] == "NameError"
    assert "add -i limit" in "\n".join(out.error["traceback"])


def test_global_generators_and_styles_continue_across_the_boundary(nb: Kernel) -> None:
    nb.run("import numpy as np, random, matplotlib.pyplot as plt\n"
           "np.random.seed(1); random.seed(2); plt.style.use('ggplot')")
    remote(nb, "r = (np.random.rand(), random.random())\nface = plt.rcParams['axes.facecolor']")
    expected = nb.value("(np.random.seed(1), random.seed(2), (np.random.rand(), "
                        "random.random()), np.random.rand())")
    nb.run("np.random.seed(1); random.seed(2); np.random.rand(); random.random()")
    assert nb.value("r") == expected[2] and nb.value("face") == "#E5E5E5"
    remote(nb, "np.random.seed(7)\nplt.style.use('dark_background')")
    assert nb.value("(np.random.rand(), plt.rcParams['figure.facecolor'])") == \
        (nb.value("np.random.seed(7) or np.random.rand()"), "black")
    nb.run("plt.style.use('default')")


def test_displays_clear_output_and_figures_in_their_local_order(nb: Kernel) -> None:
    out = remote(nb, """\
        from IPython.display import display, clear_output
        import matplotlib.pyplot as plt
        print("before")
        display("shown")
        clear_output(wait=True)
        print("after")
        handle = display("v1", display_id=True)
        handle.update("v2")
        plt.plot([1, 2]); plt.show()
        plt.plot([2, 1])
        "value"
        """)
    assert shown(out) == [
        ("stdout", "before\n"), ("display_data", "'shown'"), ("clear", True),
        ("stdout", "after\n"), ("display_data", "'v1'"), ("update_display_data", "'v2'"),
        ("display_data", "<Figure size 640x480 with 1 Axes>"), ("execute_result", "'value'"),
        ("display_data", "<Figure size 640x480 with 1 Axes>")]
    assert nb.value("display.__module__") == "IPython.core.display_functions"


def test_a_reused_task_shows_its_output_again(nb: Kernel) -> None:
    cell = "print('once more')\nfrom IPython.display import display\ndisplay('x')\n41 + 1"
    first = remote(nb, cell)
    again = remote(nb, cell)
    assert shown(again) == shown(first) == [("stdout", "once more\n"),
                                            ("display_data", "'x'"),
                                            ("execute_result", "42")]
    views = " ".join(str(m["content"]) for m in again.of_type("comm_msg"))
    assert "reused the results of the identical task" in views


def test_errors_are_raised_as_locally(nb: Kernel) -> None:
    out = remote(nb, "x = (1,\ny = 2", allow_error=True)
    assert out.error["ename"] == "SyntaxError" and "never closed" in out.error["evalue"]
    assert any("line 1" in line for line in out.error["traceback"])
    nb.run("class Failed(Exception):\n    def __init__(self, code):\n"
           "        super().__init__(f'failed with {code}')\n        self.code = code")
    out = remote(nb, "raise Failed(3)", allow_error=True)
    assert (out.error["ename"], out.error["evalue"]) == ("Failed", "failed with 3")
    nb.run("try:\n    get_ipython().run_cell_magic('remote', '', 'open(\"nope.txt\")')\n"
           "except FileNotFoundError as e:\n    caught = (e.errno, e.filename, str(e))")
    assert nb.value("caught") == (2, "nope.txt", "[Errno 2] No such file or directory: "
                                                 "'nope.txt'")


def test_on_this_machine_the_cell_runs_in_the_notebooks_folder(nb: Kernel) -> None:
    root: Path = nb.root  # type: ignore[attr-defined]
    (root / "numbers.csv").write_text("1\n2\n")
    remote(nb, "total = sum(int(x) for x in open('numbers.csv'))\n"
               "open('written.txt', 'w').write(str(total))")
    assert (root / "written.txt").read_text() == "3"


@pytest.fixture(scope="module")
def far(tmp_path_factory: pytest.TempPathFactory, sshd: Any,
        ssh_transport: str) -> Iterator[Kernel]:
    """A host that does not see the notebook's folder (no paths: mapping)."""
    root = tmp_path_factory.mktemp("far")
    kernel = start_kernel(root, ssh_host(sshd, "far", root / "remote", auto_files="1M"),
                          REMOTE_MAGIC_DISPLAY="widget")
    kernel.root = root  # type: ignore[attr-defined]
    yield kernel
    kernel.shutdown()


def test_files_travel_to_and_from_a_host_that_does_not_share_the_folder(far: Kernel) -> None:
    root: Path = far.root  # type: ignore[attr-defined]
    (root / "data").mkdir()
    (root / "data" / "a.txt").write_text("alpha")
    (root / "helpers.py").write_text("def shout(s):\n    return s.upper()\n")
    (root / "huge.bin").write_bytes(b"x" * 2_000_000)
    out = remote(far, """\
        import os, helpers
        text = helpers.shout(open("data/a.txt").read())
        big = os.path.exists("huge.bin")
        os.makedirs("results", exist_ok=True)
        open("results/out.txt", "w").write(text)
        here = os.getcwd()""", "-q far")
    assert far.value("(text, big)") == ("ALPHA", False)
    assert str(root / "remote") in far.value("here")
    assert (root / "results" / "out.txt").read_text() == "ALPHA"
    views = " ".join(str(m["content"]) for m in out.of_type("comm_msg"))
    assert "results/out.txt" in views and "huge.bin" in views  # said: copied, and not sent


def test_a_local_file_changed_during_the_task_is_not_overwritten(far: Kernel) -> None:
    root: Path = far.root  # type: ignore[attr-defined]
    (root / "notes.txt").write_text("mine")
    msg = far.start("%%remote -q far\nimport time\ntime.sleep(1.5)\n"
                    "open('notes.txt', 'w').write('theirs')")
    time.sleep(0.5)
    (root / "notes.txt").write_text("mine, edited meanwhile")
    far.collect(msg, timeout=60)
    assert (root / "notes.txt").read_text() == "mine, edited meanwhile"
    beside = list(root.glob("notes.txt.from-task-*"))
    assert len(beside) == 1 and beside[0].read_text() == "theirs"


def test_figures_come_in_the_notebooks_inline_formats_and_size(tmp_path: Path) -> None:
    import base64
    import os
    import struct

    from helpers.kernel import Kernel

    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the inline backend
    env.update(REMOTE_MAGIC_HOME=str(tmp_path / "data"),
               REMOTE_MAGIC_CONFIG=str(tmp_path / "hosts.yaml"), REMOTE_MAGIC_DISPLAY="widget")
    (tmp_path / "hosts.yaml").write_text(f"hosts:\n  localhost:\n    workdir: {tmp_path}/w\n")
    kernel = Kernel(env, str(tmp_path))
    try:
        kernel.run("%load_ext remote_magic\nimport matplotlib.pyplot as plt\n"
                   "%config InlineBackend.figure_formats = ['png', 'svg']\n"
                   "plt.rcParams['figure.dpi'] = 50")
        plot = "plt.plot([1, 3, 2]); plt.title('t');"

        def figures(outcome: Any) -> list[dict[str, Any]]:
            return [m["content"]["data"] for m in outcome.of_type("display_data")
                    if "image/png" in m["content"]["data"]]

        local, there = figures(kernel.run(plot)), figures(remote(kernel, plot))
        assert len(local) == len(there) == 1
        assert sorted(there[0]) == sorted(local[0]) == ["image/png", "image/svg+xml",
                                                        "text/plain"]

        def size(figure: dict[str, Any]) -> tuple[int, int]:
            return struct.unpack(">II", base64.b64decode(figure["image/png"])[16:24])

        assert size(there[0]) == size(local[0])  # the same dpi, the same bounding box
    finally:
        kernel.shutdown()
