"""Module settings a cell depends on travel with the task, and come back when it changes them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from remote_magic.wire import ambient


def in_fresh_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_settings_at_their_fixed_defaults_are_left_out() -> None:
    out = in_fresh_python("""
        import numpy, matplotlib
        from remote_magic.wire import ambient
        print(sorted(k.split(":")[0] for k in ambient.capture()))
        """)
    assert out == "['random']"  # an RNG state is never "default"; nothing else changed


def test_the_kernels_settings_reach_a_task_and_the_tasks_changes_come_back() -> None:
    out = in_fresh_python("""
        import random, numpy as np, pandas as pd, matplotlib, matplotlib.style
        from remote_magic.wire import ambient
        from remote_magic.host.importhooks import when_imported
        np.random.seed(0); random.seed(1)
        np.set_printoptions(precision=3)
        pd.set_option("display.max_rows", 7)
        matplotlib.style.use("ggplot")
        sent = ambient.capture()
        expected = (np.random.rand(), random.random())
        # a "task": everything back to defaults, then the tracker puts the settings in place
        np.random.seed(99); random.seed(99); np.set_printoptions(precision=8)
        pd.reset_option("display.max_rows"); matplotlib.rcdefaults()
        tracker = ambient.Tracker(ambient.seal(sent), when_imported)
        print((np.random.rand(), random.random()) == expected)
        print(np.get_printoptions()["precision"], pd.get_option("display.max_rows"),
              matplotlib.rcParams["axes.facecolor"])
        pd.set_option("display.max_rows", 3)
        print(sorted(k.split(":")[0] for k in tracker.changed()))
        """)
    lines = out.splitlines()
    assert lines[0] == "True"
    assert lines[1] == "3 7 #E5E5E5"
    assert lines[2] == "['numpy.random', 'pandas', 'random']"


def test_options_a_task_put_back_to_their_defaults_come_back_as_defaults() -> None:
    out = in_fresh_python("""
        import numpy as np, matplotlib
        from remote_magic.wire import ambient
        from remote_magic.host.importhooks import when_imported
        np.set_printoptions(precision=2); matplotlib.rcParams["lines.linewidth"] = 9
        tracker = ambient.Tracker(ambient.seal(ambient.capture()), when_imported)
        np.set_printoptions(precision=8); matplotlib.rcdefaults()  # what the cell does
        changed = tracker.changed()
        np.set_printoptions(precision=2); matplotlib.rcParams["lines.linewidth"] = 9
        assert ambient.apply_changes(changed) == []  # in the kernel, afterwards
        print(np.get_printoptions()["precision"], matplotlib.rcParams["lines.linewidth"])
        """)
    assert out == "8 1.5"


def test_only_what_a_task_changed_comes_back_not_its_own_defaults() -> None:
    out = in_fresh_python("""
        import sys
        from remote_magic.wire import ambient
        from remote_magic.host.importhooks import when_imported
        tracker = ambient.Tracker({}, when_imported)  # the notebook had not imported pandas
        import pandas as pd
        pd.set_option("display.max_rows", 5)  # the cell
        changed = tracker.changed()
        key = next(k for k in changed if k.startswith("pandas"))
        print(changed[key])
        """)
    # not display.max_columns, whose default here (a "terminal") is not the notebook's
    assert out == "{'display.max_rows': 5}"


def test_pandas_prints_as_in_the_notebook_whatever_its_process_defaults() -> None:
    out = in_fresh_python("""
        import pandas as pd
        from remote_magic.wire import ambient
        from remote_magic.host.importhooks import when_imported
        notebook = ambient.capture()
        key = next(k for k in notebook if k.startswith("pandas"))
        notebook[key]["display.max_columns"] = 20  # a notebook's kernel
        pd.set_option("display.max_columns", 0)  # a task: pandas thinks it has a terminal
        ambient.Tracker(ambient.seal(notebook), when_imported)
        print(pd.get_option("display.max_columns"))
        """)
    assert out == "20"


def test_a_setting_this_version_refuses_is_reported_not_raised() -> None:
    key = next(k for k in ambient.SETTINGS if k.startswith("random"))
    assert ambient.apply_changes({key: "not a state"}) == [key]


def test_a_setting_that_holds_a_notebook_function_reaches_the_task() -> None:
    out = in_fresh_python("""
        import pandas as pd
        from remote_magic.wire import ambient
        from remote_magic.host.importhooks import when_imported
        pd.set_option("display.float_format", lambda x: f"<{x:.1f}>")
        sealed = ambient.seal(ambient.capture())
        pd.reset_option("display.float_format")  # a task, until the tracker sets it
        ambient.Tracker(sealed, when_imported)
        print(pd.get_option("display.float_format")(2.5))
        """)
    assert out == "<2.5>"
