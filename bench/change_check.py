"""What it costs a task to find out which of its inputs the cell changed in place.

Runs cells on localhost through the same path as `%%remote` (prepare, stage, run, retrieve,
apply), each with about 1 GiB of inputs, once changing none of them and once changing one
element, and prints the end-to-end task time next to the time the runner spent on the check
(fingerprints before and after the cell), with their ratio. Budget: for 1 GiB of inputs that
the cell does not change, the check costs at most 10 % of the task time.

    python bench/change_check.py [--gib 1.0] [-n 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def run_cell(client: Any, code: str, ns: dict[str, Any]) -> tuple[float, float]:
    from remote_magic.client.prepare import TaskOptions, prepare_cell
    from remote_magic.wire.taskdir import TaskPaths, read_json

    start = time.perf_counter()
    options = TaskOptions(rerun=True)
    prepared = prepare_cell(code, ns, client.host("localhost"), options)
    record = client.submit(prepared).record
    for update in client.follow(record):
        if update.final:
            break
    record = client.store.get(record.id)
    result = client.result(record, namespace=ns, originals=prepared.values)
    result.apply(ns)
    took = time.perf_counter() - start
    if result.error is not None:
        raise SystemExit(f"the cell failed: {result.error}")
    check = read_json(TaskPaths(record.remote_dir).result)["check_seconds"]
    client.purge([record])
    return took, check


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("-n", type=int, default=3)
    args = parser.parse_args()
    size = int(args.gib * (1 << 30))
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        (root / "hosts.yaml").write_text(f"hosts:\n  localhost:\n    workdir: {root / 'w'}\n")
        os.environ.update(REMOTE_MAGIC_HOME=str(root / "data"),
                          REMOTE_MAGIC_CONFIG=str(root / "hosts.yaml"))
        os.chdir(tmp)
        from remote_magic.client.core import Client

        client = Client()
        columns = 8
        rows = size // 8 // columns
        cases = {
            "numpy array": {"data": np.ones(size // 8)},
            "pandas DataFrame": {"data": pd.DataFrame(
                {f"c{i}": np.full(rows, float(i)) for i in range(columns)})},
        }
        cells = {"changes nothing": "first = float(data.iloc[0, 0]) if hasattr(data, 'iloc') "
                                    "else float(data[0])",
                 "changes one value": "if hasattr(data, 'iloc'):\n    data.iloc[0, 0] = 2.0\n"
                                      "else:\n    data[0] = 2.0"}
        run_cell(client, "warm = 1", {})  # the agent starts once
        print(f"{args.gib:g} GiB of inputs on localhost, median of {args.n} "
              f"({os.cpu_count()} cores, Python {sys.version.split()[0]}):")
        for label, ns in cases.items():
            for what, code in cells.items():
                runs = [run_cell(client, code, ns) for _ in range(args.n)]
                took = statistics.median(t for t, _ in runs)
                check = statistics.median(c for _, c in runs)
                print(f"  {label:17} {what:18} task {took * 1000:8.1f} ms, check "
                      f"{check * 1000:7.1f} ms = {check / took:6.1%} of the task"
                      + (" (budget 10 %)" if what == "changes nothing" else ""))
        client.close()


if __name__ == "__main__":
    main()
