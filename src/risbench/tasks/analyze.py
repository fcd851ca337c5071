"""mode=analyze analysis=<name>: run a paper's analysis function over a split, print and save its JSON."""

from __future__ import annotations

import json
import time

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from risbench.config import instantiate_node
from risbench.errors import RisbenchError
from risbench.tasks.common import (build_datamodule, build_lit, build_net, check_checkpoint_matches,
                                   config_from_checkpoint, log, read_checkpoint, resolve_ckpt_path, run_dir,
                                   write_results)


def analyze(cfg: DictConfig) -> dict:
    started = time.time()
    if cfg.get("analysis") is None:
        raise RisbenchError("mode=analyze needs an analysis: add analysis=<name> (conf/analysis/<name>.yaml)")
    L.seed_everything(cfg.seed, workers=True)
    ckpt_path = resolve_ckpt_path(cfg, required=False)
    checkpoint, tokenizer = None, None
    if ckpt_path is not None:
        checkpoint = read_checkpoint(ckpt_path)
        cfg, _, tokenizer = config_from_checkpoint(cfg, checkpoint)
    options = OmegaConf.to_container(cfg.analysis, resolve=True)
    split = options.pop("split", "val")
    function = instantiate_node(options, config_key="analysis")
    datamodule = build_datamodule(cfg, tokenizer)
    net = build_net(cfg, datamodule.tokenizer.vocab_size)
    if ckpt_path is None:
        log.warning("mode=analyze without ckpt_path: analysing randomly initialised weights")
    else:
        lit = build_lit(cfg, net, datamodule)
        lit.load_state_dict(check_checkpoint_matches(ckpt_path, lit, checkpoint)["state_dict"])
    net.eval()
    with torch.no_grad():
        result = function(model=net, dataloader=datamodule.split_dataloader(split))
    text = json.dumps(result, indent=2)
    print(text)
    (run_dir() / "analysis.json").write_text(text)
    write_results(cfg, started, analysis=result, checkpoint=ckpt_path, split=split)
    return result
