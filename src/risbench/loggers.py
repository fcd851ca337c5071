"""Logger factories that need more than a `_target_` (W&B must never wait on the network)."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger


def wandb_api_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def make_wandb_logger(project: str, save_dir: str, entity: str | None = None, group: str | None = None,
                      tags: list[str] | None = None, offline: bool = False, log_model: bool = False) -> WandbLogger:
    """W&B logger; offline (run written under ``save_dir``, `wandb sync` later) when no API key is set."""
    offline = offline or os.environ.get("WANDB_MODE") == "offline" or not wandb_api_key_available()
    if offline:
        os.environ["WANDB_MODE"] = "offline"
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=project, entity=entity, group=group, tags=list(tags or []), save_dir=save_dir,
                       offline=offline, log_model=log_model)
