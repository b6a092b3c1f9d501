"""The magics' defaults as IPython configuration, in a live kernel: `%config RemoteMagics.*`
takes effect at once, and ipython_config.py sets them for every kernel; the environment
variables keep working where nothing is configured."""

from __future__ import annotations

from pathlib import Path

from helpers.kernel import CLIENT, Kernel, start_kernel

OTHER = "  other:\n    workdir: {root}/other-work\n"


def test_config_sets_the_default_host_display_and_status_rows(tmp_path: Path) -> None:
    kernel = start_kernel(tmp_path, OTHER.format(root=tmp_path), REMOTE_MAGIC_DISPLAY="widget")
    try:
        listed = kernel.run("%config RemoteMagics").stdout
        assert "RemoteMagics.default_host" in listed and "RemoteMagics.recent_rows" in listed
        kernel.run("%%remote --name here\nx = 1")
        kernel.run('%config RemoteMagics.default_host = "other"')
        kernel.run("%%remote --name there\ny = 2")
        hosts = kernel.value("{r.name: r.host for r in __import__('remote_magic').client."
                             "core.get_client().store.list()}")
        assert hosts == {"here": "localhost", "there": "other"}
        assert kernel.value("__import__('remote_magic').notebook.widgets."
                            "widget_frontend()") is True  # the environment variable
        kernel.run('%config RemoteMagics.display = "text"')
        assert kernel.value("__import__('remote_magic').notebook.widgets."
                            "widget_frontend()") is False
        shown = _status(kernel)
        assert "here" in shown and "there" in shown  # finished just now: listed
        kernel.run("%config RemoteMagics.recent_rows = 0")
        assert "No tasks" in _status(kernel)
        # poll intervals: the kernel's, for hosts whose entry sets none; an open session
        # follows at once, without reconnecting
        session = f"{CLIENT}.session('other')"
        kernel.run("%config RemoteMagics.status_interval = 30")
        assert kernel.value(f"({session}.status_interval, {session}.scheduler_poll)") == \
            (30.0, None)
        kernel.run("%config RemoteMagics.scheduler_poll = 45")
        assert kernel.value(f"{session}.scheduler_poll") == 45.0
        refused = kernel.run("%config RemoteMagics.status_interval = 0.2").stderr
        assert "'status_interval' trait" in refused and "less than 1.0" in refused  # IPython's
        assert kernel.value(f"{session}.status_interval") == 30.0  # unchanged
    finally:
        kernel.shutdown()


def _status(kernel: Kernel) -> str:
    return kernel.run("%remote_status").of_type("display_data")[0]["content"]["data"][
        "text/plain"]


def test_ipython_config_file_applies_to_every_kernel(tmp_path: Path) -> None:
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_config.py").write_text('c.RemoteMagics.default_host = "other"\n'
                                               "c.RemoteMagics.scheduler_poll = 60\n")
    kernel = start_kernel(tmp_path, OTHER.format(root=tmp_path),
                          IPYTHONDIR=str(tmp_path / "ipython"))
    try:
        kernel.run("%%remote --name configured\nz = 3")
        assert kernel.value("__import__('remote_magic').client.core.get_client()"
                            ".store.list()[0].host") == "other"
        assert kernel.value(f"{CLIENT}.session('other').scheduler_poll") == 60.0
    finally:
        kernel.shutdown()
