"""mode=train: fit, then test the selected checkpoint (best by val/oIoU, or last) on every test split."""

from __future__ import annotations

import time

import lightning as L
from omegaconf import DictConfig

from risbench.profiling import count_params
from risbench.tasks.common import (build_datamodule, build_lit, build_net, build_trainer, collect_metrics,
                                   log, print_metrics, resolve_ckpt_path, write_results)


def train(cfg: DictConfig) -> dict:
    started = time.time()
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    net = build_net(cfg, datamodule.tokenizer.vocab_size)
    resume_from = resolve_ckpt_path(cfg, required=False)
    if resume_from is None and hasattr(net, "load_pretrained"):
        net.load_pretrained()
    lit = build_lit(cfg, net, datamodule)
    trainer = build_trainer(cfg)
    trainer.fit(lit, datamodule=datamodule, ckpt_path=resume_from)

    test_ckpt = None
    if trainer.checkpoint_callback is not None and not trainer.fast_dev_run:
        callback = trainer.checkpoint_callback
        test_ckpt = (callback.best_model_path if cfg.eval.ckpt_select == "best" else callback.last_model_path) \
            or callback.last_model_path or None
    trainer.test(lit, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=False, verbose=False)
    metrics = collect_metrics(trainer, [datamodule.val_split, *datamodule.test_split_names])
    if trainer.is_global_zero:
        print_metrics(metrics, f"{cfg.name}: test ({cfg.eval.ckpt_select} checkpoint)")
        path = write_results(cfg, started, metrics=metrics, params=count_params(net),
                             checkpoint=test_ckpt, resumed_from=resume_from,
                             data_stats=getattr(datamodule, "stats", {}))
        log.info("results written to %s", path)
    return metrics
