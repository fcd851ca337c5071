"""mode=predict ckpt_path=PATH predict.image=IMG predict.text="...": a mask PNG and an overlay PNG."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from risbench.data.datamodule import ReferCollator
from risbench.data.tokenizers import build_tokenizer
from risbench.data.transforms import InputTransform, load_rgb
from risbench.errors import MissingFileError, RisbenchError
from risbench.evaluation import Protocol
from risbench.report.overlays import overlay
from risbench.tasks.common import (build_net, check_checkpoint_matches, log, resolve_ckpt_path, run_dir,
                                   tokenizer_kwargs, write_results)

def predict(cfg: DictConfig) -> dict:
    started = time.time()
    ckpt_path = resolve_ckpt_path(cfg, required=True)
    image_path, text = cfg.predict.image, cfg.predict.text
    if not image_path or text is None:
        raise RisbenchError('mode=predict needs predict.image=PATH and predict.text="the expression"')
    if not Path(image_path).is_file():
        raise MissingFileError("predict.image", image_path, "pass the path of an existing image file")
    if not str(text).strip():
        raise RisbenchError("predict.text is empty; give the referring expression to segment")
    if cfg.predict.protocol not in ("common", "paper"):
        raise RisbenchError(f"predict.protocol must be common or paper, got {cfg.predict.protocol!r}")
    protocol = Protocol.from_config(cfg.eval[cfg.predict.protocol], f"eval.{cfg.predict.protocol}")
    tokenizer = build_tokenizer(**tokenizer_kwargs(cfg))
    net = build_net(cfg, tokenizer.vocab_size)
    checkpoint = check_checkpoint_matches(ckpt_path, torch.nn.ModuleDict({"net": net}))
    net.load_state_dict({key.removeprefix("net."): value for key, value in checkpoint["state_dict"].items()})
    net.eval()

    image = load_rgb(image_path)
    pixels, _, valid_box = InputTransform(int(cfg.data.img_size), cfg.data.resize, cfg.data.normalize)(image)
    sample = {"image": pixels, "mask": torch.zeros(1, *pixels.shape[-2:]), "valid_box": valid_box,
              "orig_size": torch.tensor([image.height, image.width]), "text": str(text), "ref_id": -1,
              "sent_id": -1, "image_id": -1}
    batch = ReferCollator(tokenizer)([sample])  # what evaluation's loader does to a sample
    with torch.no_grad():
        logits = net.mask_logits(net(batch)).float()
    mask = protocol.original_masks(logits, batch)[0].numpy()

    out = run_dir()
    Image.fromarray((mask * 255).astype(np.uint8)).save(out / "mask.png")
    overlay(image, mask, str(text)).save(out / "overlay.png")
    log.info("wrote %s and %s (%d foreground pixels)", out / "mask.png", out / "overlay.png", int(mask.sum()))
    write_results(cfg, started, checkpoint=ckpt_path, image=str(image_path), text=str(text),
                  protocol=OmegaConf.to_container(cfg.eval[cfg.predict.protocol], resolve=True),
                  foreground_pixels=int(mask.sum()), outputs=["mask.png", "overlay.png"])
    return {"mask": str(out / "mask.png"), "overlay": str(out / "overlay.png")}
