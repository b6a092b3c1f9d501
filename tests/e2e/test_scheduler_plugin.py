"""A scheduler plugin: a tiny package, installed for the test (a folder on the path with its
.dist-info), registers a scheduler in the entry-point group `remote_magic.schedulers`; a host
names it in `scheduler:` and a task runs through it, on the live SLURM it wraps. The built-in
schedulers are registered the same way."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from remote_magic import RemoteExecutor
from remote_magic.client.core import Client
from remote_magic.errors import ConfigError
from remote_magic.host.schedulers import BUILT_IN, plugins, scheduler_names

PLUGIN = '''\
"""A site's scheduler: SLURM with one directive of its own."""
from remote_magic.host.schedulers.slurm import Slurm


class SiteSlurm(Slurm):
    name = "siteslurm"
    title = "Site SLURM (a plugin)"

    def resource_lines(self, resources, name, taskdir):
        return [*super().resource_lines(resources, name, taskdir), "--comment=site-plugin"]
'''


def _install_plugin(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `pip install` of a package with an entry point leaves: the module and its
    .dist-info (METADATA, entry_points.txt), on the path of this process and its children."""
    root.mkdir()
    (root / "rm_site_plugin.py").write_text(PLUGIN)
    info = root / "rm_site_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rm-site-plugin\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [remote_magic.schedulers]
        siteslurm = rm_site_plugin:SiteSlurm
        """))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root))  # the agent, and the job it submits


def test_the_built_in_schedulers_are_entry_points() -> None:
    assert {n: v for n, v in plugins().items() if n in BUILT_IN} == BUILT_IN


def test_a_task_runs_through_a_plugin_scheduler(home: Path, slurm: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from remote_magic.testing.schedulers import slurm_job_fields

    _install_plugin(home / "plugins", monkeypatch)
    assert "siteslurm" in scheduler_names()
    with open(home / "hosts.yaml", "a") as f:
        f.write(f"  site:\n    workdir: {home / 'site'}\n    scheduler: siteslurm\n"
                "    resources: {walltime: '0:05:00'}\n")
    client = Client()
    try:
        with RemoteExecutor("site", client=client) as pool:
            future = pool.submit(pow, 2, 10)
            assert future.result(timeout=120) == 1024
        record = client.store.get(future.task_id)  # type: ignore[attr-defined]
        assert record.job_id and record.state == "completed"
        assert slurm_job_fields(record.job_id).get("Comment") == "site-plugin"
        script = next((home / "site" / "tasks" / record.id).glob("*.sh")).read_text()
        assert "#SBATCH --comment=site-plugin" in script
    finally:
        client.close()


def test_an_unknown_scheduler_names_the_plugins_too(home: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _install_plugin(home / "plugins", monkeypatch)
    with open(home / "hosts.yaml", "a") as f:
        f.write("  site:\n    scheduler: siteslrum\n")
    with pytest.raises(ConfigError, match="did you mean 'siteslurm'.*sge, siteslurm.*entry "
                                          "point of the group 'remote_magic.schedulers'"):
        Client().host("site")
