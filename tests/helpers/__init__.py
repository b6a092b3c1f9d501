"""What the tests share: a kernel driver, waiting, test hosts, and a browser driver.

Fixtures live in tests/conftest.py; plain functions and classes live here, imported by name.
"""

from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent  # the tests folder
REPO = TESTS.parent
