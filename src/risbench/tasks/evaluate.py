"""mode=eval ckpt_path=PATH: test a checkpoint on every test split of the configured dataset."""

from __future__ import annotations

import time

import lightning as L
import torch
from omegaconf import DictConfig

from risbench.profiling import count_params
from risbench.tasks.common import (build_datamodule, build_lit, build_net, build_trainer, check_checkpoint_matches,
                                   log, print_metrics, protocols, resolve_ckpt_path, run_dir, write_predictions,
                                   write_results)


def write_overlays(trainer: L.Trainer, lit, datamodule, k: int) -> list[str]:
    """eval.overlays=K: pictures of the K worst and K best expressions of every test split (rank 0 draws)."""
    from risbench.report.overlays import write_ranked_overlays

    scores = lit.expression_ious
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, scores)
        scores = {split: [pair for part in gathered for pair in part.get(split, [])] for split in scores}
        if torch.distributed.get_rank() != 0:
            return []
    loaders = {split: datamodule.split_dataloader(split) for split in scores}
    with trainer.precision_plugin.forward_context():  # as the test steps ran
        return write_ranked_overlays(lit.net, loaders, scores, k, lit.protocols["common"], run_dir() / "overlays",
                                     lit.device)


def evaluate(cfg: DictConfig) -> dict:
    started = time.time()
    ckpt_path = resolve_ckpt_path(cfg, required=True)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    net = build_net(cfg, datamodule.tokenizer.vocab_size)
    lit = build_lit(cfg, net, datamodule)
    lit.load_state_dict(check_checkpoint_matches(ckpt_path, lit)["state_dict"])
    trainer = build_trainer(cfg, with_callbacks=False)
    trainer.test(lit, datamodule=datamodule, verbose=False)
    metrics = lit.results
    predictions = write_predictions(lit)
    overlays = write_overlays(trainer, lit, datamodule, int(cfg.eval.overlays)) if cfg.eval.get("overlays") else []
    if trainer.is_global_zero:
        print_metrics(metrics, f"{cfg.name}: eval", cfg)
        log.info("evaluated %s", ckpt_path)
        path = write_results(cfg, started, metrics=metrics, protocols=protocols(cfg), params=count_params(net),
                             checkpoint=ckpt_path, predictions=predictions, overlays=overlays,
                             data_stats=getattr(datamodule, "stats", {}))
        log.info("results written to %s", path)
    return metrics
