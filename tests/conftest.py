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


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory, data_dir) -> tuple[Path, Path]:
    """(cwd, run folder) of one short training run of the default model on the small synthref (2 steps,
    predictions saved), in the fixed run folder ``<cwd>/trained``; shared by the CLI and reliability tests,
    which only read it."""
    from tests.fixtures import SMALL_DATA
    from tests.helpers import run_cli

    root = tmp_path_factory.mktemp("trained")
    run = root / "trained"
    result = run_cli([f"paths.data_dir={data_dir}", *SMALL_DATA, "trainer.max_steps=2", "eval.save_predictions=true",
                      f"hydra.run.dir={run}"], cwd=root)
    assert result.returncode == 0, result.stderr[-4000:]
    return root, run
