"""Print an executed notebook's cells and text outputs, so a terminal shows what it did."""

import sys

import nbformat


def main(path: str) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        print("In: " + cell.source.replace("\n", "\n    "))
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                print("    " + out.text.rstrip().replace("\n", "\n    "))
            elif out.output_type in ("execute_result", "display_data"):
                data = out.get("data", {})
                if "image/png" in data:
                    print("    [image/png]")
                elif "text/plain" in data:
                    print("    " + data["text/plain"].rstrip().replace("\n", "\n    "))
            elif out.output_type == "error":
                print(f"    {out.ename}: {out.evalue}")
    print(f"Executed notebook written to {path}")


if __name__ == "__main__":
    main(sys.argv[1])
