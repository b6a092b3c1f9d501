#!/usr/bin/env bash
# Install the package and run the quick-start notebook headless on the embedded localhost host.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m pip install -q ".[notebook]"
python scripts/run_notebook.py notebooks/quickstart.ipynb
