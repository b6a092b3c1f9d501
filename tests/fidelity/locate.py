"""Where a target's differing value or file parts from L's, walked down in both kernels or
read byte by byte, so that a difference names the part that differs, not just two summaries."""

from __future__ import annotations

from pathlib import Path

from .compare import Difference
from .kernels import Kernel


def annotate(found: list[Difference], left: Kernel, right: Kernel, target: str) -> None:
    """Add where the two sides part to each new difference of a value or a file."""
    for difference in found:
        if difference.chain == "inherited" or difference.name.startswith("<"):
            continue
        where = ""
        if difference.aspect == "value":
            where = locate(left, right, target, difference.name)
        elif difference.aspect == "files":
            relative = difference.name[len("file:"):]
            where = locate_bytes(left.cwd / relative, right.cwd / relative, target)
        if where:
            difference.description += f"; {where}"


def locate(left: Kernel, right: Kernel, target: str, name: str, depth: int = 8) -> str:
    """Walk two kernels' values of `name` down to the first part that differs ("" if the
    values cannot be walked: the summaries then say all there is)."""
    try:
        return _locate(left, right, target, name, depth)
    except Exception:
        return ""


def _locate(left: Kernel, right: Kernel, target: str, name: str, depth: int) -> str:
    path: list[str] = []
    also: list[tuple[str, str, str]] = []  # other parts differing beside the one followed
    while True:
        futures = [k.submit(k.explain, name, path) for k in (left, right)]
        a, b = (f.result() for f in futures)
        if "missing" in a or "missing" in b:
            return ""
        if not a["children"] or not b["children"] or len(path) == depth:
            break
        ka = {k: (h, s) for k, h, s in a["children"]}
        kb = {k: (h, s) for k, h, s in b["children"]}
        if set(ka) != set(kb):
            only_l = [k for k in ka if k not in kb][:3]
            only_r = [k for k in kb if k not in ka][:3]
            return (f"at {render_path(name, path)}: parts only in L: {only_l or '-'}, "
                    f"only in {target}: {only_r or '-'}")
        differing = [k for k in ka if ka[k][0] != kb[k][0]]
        if not differing:  # the value's own header differs (type, shape, dtype, length)
            if a.get("more"):
                return f"at {render_path(name, path)}, beyond the first " \
                       f"{len(ka)} parts: L: {a['summary']} vs {target}: {b['summary']}"
            break
        also = [(render_path(name, [*path, k]), ka[k][1], kb[k][1])
                for k in differing[1:3] if not k.startswith("[")]  # items: the first will do
        path.append(differing[0])
    if not path and a["summary"] != b["summary"]:
        return ""  # the summaries shown already say it
    text = f"at {render_path(name, path)}: L: {a['summary']} vs {target}: {b['summary']}"
    return text + "".join(f"; and at {where}: L: {sl} vs {target}: {sr}"
                          for where, sl, sr in also)


def locate_bytes(left: Path, right: Path, target: str) -> str:
    """Where two copies of a file part: the first differing byte, with some context."""
    try:
        with open(left, "rb") as a, open(right, "rb") as b:
            offset = 0
            while True:
                x, y = a.read(1 << 16), b.read(1 << 16)
                if x != y:
                    break
                if not x:
                    return ""
                offset += len(x)
            at = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
            start = max(0, at - 16)
            return (f"first differing byte {offset + at}: L: {x[start:at + 24]!r} vs "
                    f"{target}: {y[start:at + 24]!r}")
    except OSError:
        return ""


def render_path(name: str, path: list[str]) -> str:
    return name + "".join(k if k.startswith(("[", ".")) else f".{k}" for k in path)
