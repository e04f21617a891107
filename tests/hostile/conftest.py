"""Hostile-neighbour tests (issue 9): one guest attacks, the others must not notice."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long attack or soak runs (minutes)")
