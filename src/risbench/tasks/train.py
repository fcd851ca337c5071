"""mode=train: fit, then test the selected checkpoint (best by val/oIoU, or last) on every test split."""

from __future__ import annotations

import time

import lightning as L
from omegaconf import DictConfig

from risbench.errors import RisbenchError
from risbench.profiling import count_params
from risbench.tasks.common import (build_datamodule, build_lit, build_net, build_trainer, collect_metrics,
                                   log, print_metrics, resolve_ckpt_path, write_results)


def selected_checkpoint(trainer: L.Trainer, select: str) -> str | None:
    """The best (monitored) or the last (unmonitored) checkpoint this fit wrote."""
    if select not in ("best", "last"):
        raise RisbenchError(f"eval.ckpt_select must be 'best' or 'last', got {select!r}")
    paths = {"best" if callback.monitor else "last": callback.best_model_path
             for callback in trainer.checkpoint_callbacks if callback.best_model_path}
    return paths.get(select) or paths.get("last")


def train(cfg: DictConfig) -> dict:
    started = time.time()
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    net = build_net(cfg, datamodule.tokenizer.vocab_size)
    resume_from = resolve_ckpt_path(cfg, required=False)
    if resume_from is None and hasattr(net, "load_pretrained"):
        net.load_pretrained()
    lit = build_lit(cfg, net, datamodule)
    trainer = build_trainer(cfg, validates=bool(datamodule.val_split))
    trainer.fit(lit, datamodule=datamodule, ckpt_path=resume_from)

    test_ckpt = None if trainer.fast_dev_run else selected_checkpoint(trainer, cfg.eval.ckpt_select)
    trainer.test(lit, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=False, verbose=False)
    metrics = collect_metrics(trainer, [split for split in [datamodule.val_split, *datamodule.test_split_names]
                                        if split])
    if trainer.is_global_zero:
        print_metrics(metrics, f"{cfg.name}: test ({cfg.eval.ckpt_select} checkpoint)")
        path = write_results(cfg, started, metrics=metrics, params=count_params(net),
                             checkpoint=test_ckpt, resumed_from=resume_from,
                             data_stats=getattr(datamodule, "stats", {}))
        log.info("results written to %s", path)
    return metrics
