#!/usr/bin/env bash
# Install the package and run the quick-start notebook headless on the embedded localhost host.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m pip install -q ".[notebook]"
python -m ipykernel install --sys-prefix --name python3 >/dev/null
jupyter execute --output=quickstart.out notebooks/quickstart.ipynb
python scripts/show_notebook.py notebooks/quickstart.out.ipynb
