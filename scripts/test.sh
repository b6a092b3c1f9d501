#!/usr/bin/env bash
# Install the package with its test extras and run the whole test suite (lint first).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m pip install -q -e ".[test]"
ruff check remote_magic tests bench
python -m pytest "$@"
