"""The one LightningModule: it drives any `RISModel` and never knows which paper it runs."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from risbench.data.transforms import unmap_to_original
from risbench.errors import RisbenchError
from risbench.losses import resize_logits
from risbench.metrics import ReferringSegmentationMetrics
from risbench.models.base import RISModel
from risbench.optim import build_param_groups


def threshold_logit(threshold: float) -> float:
    """``eval.threshold`` (a probability) as the logit that predictions are compared with."""
    threshold = float(threshold)
    if not 0.0 < threshold < 1.0:
        raise RisbenchError(f"eval.threshold must be a probability in (0, 1), got {threshold}")
    return math.log(threshold / (1.0 - threshold))


def masks_at_original_size(logits: torch.Tensor, batch: dict, logit_threshold: float) -> list[torch.Tensor]:
    """(B,1,h,w) mask logits -> per sample a binary (H_i, W_i) mask on the original image."""
    size = batch["image"].shape[-1]
    return [unmap_to_original(logits[i], batch["valid_box"][i], batch["orig_size"][i], size)[0] >= logit_threshold
            for i in range(logits.shape[0])]


class RISLitModule(L.LightningModule):
    """Training/evaluation loop around ``net`` (a `RISModel`).

    ``optim`` is the ``optim:`` config node; ``eval_cfg`` the ``eval:`` node; ``val_split`` and
    ``test_splits`` name the metrics (``val/oIoU``, ``testA/mIoU``, ...); ``run_info`` (experiment,
    model config, overrides) is saved in every checkpoint so a mismatch can be explained.
    """

    def __init__(self, net: RISModel, optim: DictConfig | dict, eval_cfg: DictConfig | dict,
                 val_split: str | None = "val", test_splits: Sequence[str] = ("val",), run_info: dict | None = None):
        super().__init__()
        self.run_info = run_info or {}  # stored in checkpoints: which model/overrides made them
        self.net = net
        self.optim_cfg = optim
        self.eval_cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(eval_cfg), resolve=True))
        self.val_split = val_split
        self.test_splits = list(test_splits)
        self.logit_threshold = threshold_logit(self.eval_cfg.threshold)
        metric_args = dict(prec_thresholds=list(self.eval_cfg.prec_thresholds), prec_op=self.eval_cfg.prec_op,
                           empty_union_iou=self.eval_cfg.empty_union_iou,
                           length_buckets=OmegaConf.to_object(self.eval_cfg).get("length_buckets"))
        splits = dict.fromkeys(split for split in [val_split, *self.test_splits] if split)  # val may be None
        # keyed "split/<name>": a bare split name such as "train" would clash with nn.Module attributes
        self.metrics = torch.nn.ModuleDict({f"split/{split}": ReferringSegmentationMetrics(**metric_args)
                                            for split in splits})

    # ---- steps ---------------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict:
        return self.net(batch)

    def training_step(self, batch: dict | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every sample of the batch was an unreadable image (data.skip_corrupt=true)
            return None
        losses = self.net.loss(self.net(batch), batch)
        batch_size = batch["image"].shape[0]
        self.log_dict({f"train/{name}": value.detach() for name, value in losses.items()},
                      on_step=True, on_epoch=False, prog_bar=False, batch_size=batch_size)
        self.log("train/loss_epoch", losses["loss"].detach(), on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=batch_size, sync_dist=True)
        return losses["loss"]

    def predict_masks(self, batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Binary predictions and ground truths at the configured evaluation resolution."""
        logits = self.net.mask_logits(self.net(batch)).float()  # (B,1,h,w)
        if self.eval_cfg.resolution == "input":
            logits = resize_logits(logits, tuple(batch["mask"].shape[-2:]))
            preds = list((logits[:, 0] >= self.logit_threshold))
            targets = list(batch["mask"][:, 0] > 0.5)
            return preds, targets
        if self.eval_cfg.resolution != "original":
            raise ValueError(f"eval.resolution must be 'original' or 'input', got {self.eval_cfg.resolution!r}")
        return masks_at_original_size(logits, batch, self.logit_threshold), list(batch["orig_masks"])

    def _eval_step(self, batch: dict | None, split: str) -> None:
        if batch is None:
            return
        preds, targets = self.predict_masks(batch)
        self.metrics[f"split/{split}"].update(preds, targets, batch["num_words"])

    def _eval_epoch_end(self, splits: Sequence[str]) -> None:
        for split in splits:
            metric = self.metrics[f"split/{split}"]
            if not metric.update_called:
                continue
            values = metric.compute()
            self.log_dict({f"{split}/{key}": value.float() for key, value in values.items()}, sync_dist=False)
            metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_split)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end([self.val_split])

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, self.test_splits[dataloader_idx])

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end(self.test_splits)

    # ---- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer_factory = instantiate(self.optim_cfg.optimizer)
        base = optimizer_factory.keywords
        groups = build_param_groups(self.net, base_lr=base["lr"], weight_decay=base.get("weight_decay", 0.0),
                                    param_groups=self.optim_cfg.get("param_groups") or [],
                                    no_decay=self.optim_cfg.get("no_decay") or {})
        optimizer = optimizer_factory(groups)
        if self.optim_cfg.get("scheduler") is None:
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = instantiate(self.optim_cfg.scheduler)(optimizer, total_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- exact resume: RNG states travel with the checkpoint ---------------------------------------
    # (plain tensors and tuples only, so checkpoints load with torch.load(weights_only=True))
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(),
                                    "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
                                    "python": random.getstate()}
        checkpoint["risbench"] = self.run_info

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states:
            torch.set_rng_state(states["torch"])
            kind, keys, pos, has_gauss, cached = states["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
            random.setstate(states["python"])
