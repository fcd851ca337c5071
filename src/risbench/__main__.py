"""``python -m risbench [overrides]``: the one Hydra app; ``mode=`` picks the job (README "CLI")."""

from __future__ import annotations

import importlib
import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from risbench.config import CONF_DIR, check_scale
from risbench.errors import RisbenchError

# mode -> "module:function" under risbench.tasks (imported lazily: profile needs no data stack)
TASKS = {
    "train": "risbench.tasks.train:train",
    "eval": "risbench.tasks.evaluate:evaluate",
    "predict": "risbench.tasks.predict:predict",
    "profile": "risbench.tasks.profile:profile",
    "analyze": "risbench.tasks.analyze:analyze",
}


def _log_once() -> None:
    """Lightning adds its own console handlers; Hydra's root handlers already print (and file) its records."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).handlers.clear()


def run_task(cfg: DictConfig):
    if cfg.mode not in TASKS:
        raise RisbenchError(f"unknown mode={cfg.mode!r}; choose one of {', '.join(TASKS)}")
    choices = HydraConfig.get().runtime.choices
    check_scale(choices.get("model"), choices.get("scale"))
    module_name, function_name = TASKS[cfg.mode].split(":")
    task = getattr(importlib.import_module(module_name), function_name)
    _log_once()
    return task(cfg)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig):
    try:
        return run_task(cfg)
    except RisbenchError as error:
        print(f"\nrisbench error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
