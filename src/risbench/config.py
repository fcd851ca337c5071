"""Where the Hydra config tree lives, and small helpers to read it."""

from __future__ import annotations

from pathlib import Path

# conf/ sits at the repository root (installed in editable mode, as the README says)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
