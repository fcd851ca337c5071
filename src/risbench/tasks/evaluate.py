"""mode=eval ckpt_path=PATH: test a checkpoint on every test split of the configured dataset."""

from __future__ import annotations

import time

import lightning as L
from omegaconf import DictConfig

from risbench.profiling import count_params
from risbench.tasks.common import (build_datamodule, build_lit, build_net, build_trainer, check_checkpoint_matches,
                                   log, print_metrics, protocols, resolve_ckpt_path, write_predictions,
                                   write_results)


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
    if trainer.is_global_zero:
        print_metrics(metrics, f"{cfg.name}: eval", cfg)
        log.info("evaluated %s", ckpt_path)
        path = write_results(cfg, started, metrics=metrics, protocols=protocols(cfg), params=count_params(net),
                             checkpoint=ckpt_path, predictions=predictions,
                             data_stats=getattr(datamodule, "stats", {}))
        log.info("results written to %s", path)
    return metrics
