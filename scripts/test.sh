#!/usr/bin/env bash
# Install what the tests need (Debian packages, then the package with its test extras) and run
# the whole test suite, lint first. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash scripts/system-deps.sh
python -m pip install -q -e ".[test]"
ruff check remote_magic tests bench scripts
python -m pytest "$@"
