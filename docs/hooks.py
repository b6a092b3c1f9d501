"""MkDocs hooks: the site's pages take their text from the README (one source, not two
copies that drift apart), the hosts-file reference from the loader's own definitions, and the
magics' reference from their own argument parsers (what `%remote?` shows)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = re.compile(r"<!-- readme: (.+?) -->")
REFERENCE = "<!-- hosts-reference -->"
MAGICS = "<!-- magics-reference -->"


def on_page_markdown(markdown: str, **_: Any) -> str:
    markdown = SECTION.sub(lambda m: readme_section(m.group(1)), markdown)
    if REFERENCE in markdown:
        markdown = markdown.replace(REFERENCE, hosts_reference())
    if MAGICS in markdown:
        markdown = markdown.replace(MAGICS, magics_reference())
    return markdown


def readme_section(title: str) -> str:
    """The README's `## title` section, its headings one level down on the page."""
    text = README.read_text()
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    if found is None:
        raise ValueError(f"README.md has no section '## {title}'")
    return re.sub(r"^(#+) ", r"#\1 ", f"## {title}\n{found.group(1)}", flags=re.M)


def hosts_reference() -> str:
    """A table of every hosts-file key and resource: its JSON type and what it is for."""
    from remote_magic.config.schema import hosts_schema

    host = hosts_schema()["properties"]["hosts"]["additionalProperties"]["properties"]
    rows = ["| key | value | what it is for |", "| --- | --- | --- |"]
    for key, part in host.items():
        rows.append(f"| `{key}` | {_kind(part['anyOf'][0])} | {part['description']} |")
    resources = host["resources"]["anyOf"][0]["properties"]
    rows += ["", "`resources:` (and the cell options of the same names):", "",
             "| key | value | what it is for |", "| --- | --- | --- |"]
    for key, part in resources.items():
        rows.append(f"| `{key}` | {_kind(part['anyOf'][0])} | {part['description']} |")
    return "\n".join(rows)


def magics_reference() -> str:
    """Each magic's usage and options, as its parser prints them, 88 columns wide whatever
    the terminal that builds the site."""
    from remote_magic.notebook.magics import RemoteMagics

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"
    try:
        parts = []
        for kind, prefix in (("cell", "%%"), ("line", "%")):
            for name, method in RemoteMagics.magics[kind].items():
                usage = getattr(RemoteMagics, method).parser.format_help()
                usage = usage.removeprefix("::\n").strip("\n")
                parts.append(f"### `{prefix}{name}`\n\n```text\n{usage}\n```\n")
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
    return "\n".join(parts)


def _kind(fragment: dict[str, Any]) -> str:
    if "enum" in fragment:
        return " or ".join(f"`{v}`" for v in fragment["enum"])
    if "oneOf" in fragment:
        return " or ".join(_kind(f) for f in fragment["oneOf"])
    kind = fragment.get("type", "")
    low, high = fragment.get("minimum"), fragment.get("maximum")
    bounds = f" ({low}–{high})" if low is not None and high is not None else \
        f" (≥ {low})" if low is not None else ""
    return f"{kind}{bounds}"
