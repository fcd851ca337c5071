"""Where the Hydra config tree lives, and small helpers to read it."""

from __future__ import annotations

from pathlib import Path

# conf/ sits at the repository root (installed in editable mode, as the README says)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def split_options(argv: list[str], defaults: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Separate a command's own ``key=value`` options (those in ``defaults``) from Hydra overrides."""
    options, overrides = dict(defaults), []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in options:
            options[key] = value
        else:
            overrides.append(arg)
    return options, overrides
