"""What a host needs to run tasks, shipped as one zip file: this package and cloudpickle.

Hosts often have no internet access, so nothing is installed there with pip: the kernel sends
the code it already has. Python imports pure-Python packages straight from a zip on
PYTHONPATH, so the runtime is a single file, uploaded under a temporary name and renamed, and
named by a hash of its contents so that kernels of different versions never collide.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from functools import lru_cache
from pathlib import Path

import cloudpickle

import remote_magic

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip entries get a fixed date: same code, same hash


@lru_cache(maxsize=1)
def runtime_zip() -> tuple[str, bytes]:
    """(file name, bytes) of the runtime for this version of the code."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in (remote_magic, cloudpickle):
            root = Path(package.__file__).resolve().parent
            for path in sorted(root.rglob("*.py")):
                name = f"{root.name}/{path.relative_to(root).as_posix()}"
                info = zipfile.ZipInfo(name, _FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, path.read_bytes())
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:12]
    return f"remote_magic-{remote_magic.__version__}-{digest}.zip", data
