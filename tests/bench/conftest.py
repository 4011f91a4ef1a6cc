"""Benchmarks: `pytest tests/bench -s` runs them and prints their tables.

Every test under tests/bench is marked slow, so CI (`pytest -m "not slow" tests`) skips them.
"""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/bench" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.slow)
