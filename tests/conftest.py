"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One small synthref install shared by the CLI tests (generated on first use)."""
    return tmp_path_factory.mktemp("risbench_data")
