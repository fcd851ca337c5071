"""``python -m risbench [overrides]``: the one Hydra app; ``mode=`` picks the job (README "CLI")."""

from __future__ import annotations

import importlib
import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from risbench.config import (CONF_DIR, CONFIG_ERRORS, check_config_types, check_scale, check_value_type,
                             config_error_message)
from risbench.errors import RisbenchError

# the root's own values (the `_target_` nodes are checked against their targets' signatures)
ROOT_TYPES = {"seed": int, "overwrite": bool, "ckpt_path": str | None}

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
    for key, wanted in ROOT_TYPES.items():
        check_value_type(cfg.get(key), wanted, key)
    check_config_types(cfg)
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


def check_hydra_flags(argv: list[str]) -> None:
    """Hydra's command flags that it refuses together, read by Hydra's own parser (Hydra raises a bare
    ValueError for them, which cannot be told apart from a task's)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    commands = {"--run": args.run, "--multirun": args.multirun, "--cfg": args.cfg is not None,
                "--info": args.info is not None, "--shell-completion": args.shell_completion}
    given = [flag for flag, on in commands.items() if on]
    if len(given) > 1:
        raise RisbenchError(f"{' and '.join(given)} cannot be combined; give one of {', '.join(commands)} "
                            "per call (python -m risbench --cfg job shows one run's config)")
    if args.resolve and args.cfg is None and not args.help:
        raise RisbenchError("--resolve goes with --cfg (python -m risbench --cfg job --resolve)")


def cli() -> None:
    """`main`, with a config that does not compose (an unknown group option or key, a bad override) or
    flags Hydra refuses together as one message and exit status 2: Hydra would print its own report and exit
    with 1. Hydra re-raises its errors here only under HYDRA_FULL_ERROR=1, so it is set for the run; a user
    who set it gets the full trace."""
    user_wants_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        check_hydra_flags(sys.argv[1:])
        main()
    except RisbenchError as error:
        print(f"\nrisbench error: {error}", file=sys.stderr)
        sys.exit(2)
    except CONFIG_ERRORS as error:
        if user_wants_trace:
            raise
        print(f"\nrisbench error: {config_error_message(error)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
