"""Execute a notebook headless (as `jupyter execute` does), save the executed copy next to it,
and print what each code cell produced, so a terminal shows the run."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def main(path: str) -> int:
    source = Path(path)
    nb = nbformat.read(source, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(source.parent)}}).execute()
    target = source.with_suffix(".out.ipynb")
    nbformat.write(nb, target)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        print("In: " + cell.source.replace("\n", "\n    "))
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                print("    " + out.text.rstrip().replace("\n", "\n    "))
            elif out.output_type in ("execute_result", "display_data"):
                data = out.get("data", {})
                text = "[image/png]" if "image/png" in data else data.get("text/plain", "")
                print("    " + text.rstrip().replace("\n", "\n    "))
    print(f"Executed copy written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
