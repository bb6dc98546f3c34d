"""Fault drills: markers (registered here so ``--strict-markers`` accepts them)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Register the drill markers."""
    config.addinivalue_line("markers", "drill: a fault drill on a private broker and node")
