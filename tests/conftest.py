"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One small synthref install shared by the CLI tests (generated on first use)."""
    return tmp_path_factory.mktemp("risbench_data")


@pytest.fixture(scope="session")
def tiny_synthref_dir(tmp_path_factory) -> Path:
    """A tiny synthref (38 images at 32 px, tests/fixtures.TINY_SYNTHREF); its parent is a paths.data_dir."""
    from tests.fixtures import make_tiny_synthref

    return make_tiny_synthref(tmp_path_factory.mktemp("tiny_synthref"))
