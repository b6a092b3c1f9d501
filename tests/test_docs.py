"""The documentation site builds from the repository with warnings as errors (`mkdocs build
--strict`): its pages take the README's sections, the hosts reference from the loader's
definitions and the magics' options from their parsers (docs/hooks.py), and the API pages
from the docstrings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import REPO


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                           str(REPO / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    hosts = (tmp_path / "site" / "hosts" / "index.html").read_text()
    assert "<td><code>scheduler_poll</code></td>" in hosts  # the generated reference
    assert "RemoteExecutor" in (tmp_path / "site" / "python" / "index.html").read_text()
    magics = (tmp_path / "site" / "notebook" / "index.html").read_text()
    assert "%remote_status [-q HOST]" in magics and "--nowait" in magics  # from the parsers
    assert (tmp_path / "site" / "hosts.schema.json").is_file()
