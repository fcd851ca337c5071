"""The one LightningModule: it drives any `RISModel` and never knows which paper it runs."""

from __future__ import annotations

import inspect
import random
import warnings
from collections.abc import Sequence

import lightning as L
import numpy as np
import pycocotools.mask as mask_utils
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from risbench.evaluation import Protocol
from risbench.metrics import ReferringSegmentationMetrics
from risbench.models.base import RISModel
from risbench.optim import build_param_groups


def prediction_records(preds: Sequence[torch.Tensor], batch: dict) -> list[dict]:
    """One record per expression: its ids and the binary mask at the original size as COCO RLE."""
    records = []
    for pred, ref_id, sent_id, image_id in zip(preds, batch["ref_id"], batch["sent_id"], batch["image_id"]):
        rle = mask_utils.encode(np.asfortranarray(pred.cpu().numpy().astype(np.uint8)))
        records.append({"ref_id": int(ref_id), "sent_id": int(sent_id), "image_id": int(image_id),
                        "size": list(rle["size"]), "counts": rle["counts"].decode("ascii")})
    return records


def expression_ious(preds: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], batch: dict,
                    empty_union_iou: float) -> list[tuple[int, float]]:
    """(sent_id, IoU) per expression, to rank them (eval.overlays)."""
    pairs = []
    for pred, target, sent_id in zip(preds, targets, batch["sent_id"]):
        union = int((pred | target).sum())
        pairs.append((int(sent_id), int((pred & target).sum()) / union if union else float(empty_union_iou)))
    return pairs


class RISLitModule(L.LightningModule):
    """Training/evaluation loop around ``net`` (a `RISModel`).

    ``optim`` is the ``optim:`` config node; ``eval_cfg`` the ``eval:`` node (its ``common`` and ``paper``
    protocols are both scored in every evaluation pass); ``val_split`` and ``test_splits`` name the metrics
    (``val/oIoU`` under the common protocol, ``val/paper/oIoU`` under the paper's, ``testA/mIoU``, ...);
    ``run_info`` (experiment, model config, overrides) is saved in every checkpoint so a mismatch can be
    explained.
    """

    PROTOCOLS = {"common": "", "paper": "paper/"}  # protocol -> metric name prefix

    def __init__(self, net: RISModel, optim: DictConfig | dict, eval_cfg: DictConfig | dict,
                 val_split: str | None = "val", test_splits: Sequence[str] = ("val",), run_info: dict | None = None):
        super().__init__()
        self.run_info = run_info or {}  # stored in checkpoints: which model/overrides made them
        self.net = net
        self.optim_cfg = optim
        self.eval_cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(eval_cfg), resolve=True))
        self.val_split = val_split
        self.test_splits = list(test_splits)
        self.results: dict[str, dict[str, float]] = {}  # split -> metric -> value of the last evaluation
        # eval.save_predictions: split -> per-expression common-protocol masks (RLE) of the test pass
        self.predictions: dict[str, list[dict]] = {}
        # eval.overlays: split -> (sent_id, common-protocol IoU) of every expression of the test pass
        self.expression_ious: dict[str, list[tuple[int, float]]] = {}
        self.protocols = {name: Protocol.from_config(self.eval_cfg[name], f"eval.{name}") for name in self.PROTOCOLS}
        shared = dict(prec_thresholds=list(self.eval_cfg.prec_thresholds),
                      length_buckets=OmegaConf.to_object(self.eval_cfg).get("length_buckets"))
        splits = dict.fromkeys(split for split in [val_split, *self.test_splits] if split)  # val may be None
        # keyed "<protocol>/<split>": a bare split name such as "train" would clash with nn.Module attributes
        self.metrics = torch.nn.ModuleDict({
            f"{name}/{split}": ReferringSegmentationMetrics(**shared, **protocol.metric_options())
            for split in splits for name, protocol in self.protocols.items()})

    # ---- steps ---------------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict:
        """``net(batch)``; with ``model.compile=true`` a model that fails to compile runs eagerly instead."""
        try:
            return self.net(batch)
        except Exception as error:  # noqa: BLE001 - any compiler failure; an eager failure is re-raised below
            if getattr(self.net, "_compiled_call_impl", None) is None:
                raise
            warnings.warn(f"model.compile: compilation failed ({type(error).__name__}: {error}); running eagerly")
            self.net._compiled_call_impl = None
            return self.net(batch)

    def training_step(self, batch: dict | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every sample of the batch was an unreadable image (data.skip_corrupt=true)
            return None
        losses = self.net.loss(self(batch), batch)
        batch_size = batch["image"].shape[0]
        self.log_dict({f"train/{name}": value.detach() for name, value in losses.items()},
                      on_step=True, on_epoch=False, prog_bar=False, batch_size=batch_size)
        self.log("train/loss_epoch", losses["loss"].detach(), on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=batch_size, sync_dist=True)
        return losses["loss"]

    def on_train_epoch_start(self) -> None:
        # Lightning hands samplers its epoch-progress counter, which runs one ahead of current_epoch after
        # resuming a step-based (trainer.max_steps) schedule; the training order follows current_epoch
        sampler = getattr(self.trainer.train_dataloader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.current_epoch)

    def _eval_step(self, batch: dict | None, split: str, record: bool = False, score: bool = False) -> None:
        if batch is None:
            return
        logits = self.net.mask_logits(self(batch)).float()  # (B,1,h,w), one forward for both protocols
        for name, protocol in self.protocols.items():
            preds, targets = protocol.scored_masks(logits, batch)
            self.metrics[f"{name}/{split}"].update(preds, targets, batch["num_words"])
            if record and name == "common":
                self.predictions.setdefault(split, []).extend(prediction_records(preds, batch))
            if score and name == "common":
                self.expression_ious.setdefault(split, []).extend(
                    expression_ious(preds, targets, batch, protocol.empty_union_iou))

    def _eval_epoch_end(self, splits: Sequence[str]) -> None:
        for split in splits:
            for name, prefix in self.PROTOCOLS.items():
                metric = self.metrics[f"{name}/{split}"]
                if not metric.update_called:
                    continue
                values = {f"{prefix}{key}": value for key, value in metric.compute().items()}
                self.log_dict({f"{split}/{key}": value.float() for key, value in values.items()}, sync_dist=False)
                # exact figures for results.json: float64 from the metric's integer sums
                self.results.setdefault(split, {}).update({key: float(value) for key, value in values.items()})
                metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_split)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end([self.val_split])

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, self.test_splits[dataloader_idx], record=bool(self.eval_cfg.save_predictions),
                        score=bool(self.eval_cfg.get("overlays")))

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end(self.test_splits)

    # ---- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer_factory = instantiate(self.optim_cfg.optimizer)
        base = optimizer_factory.keywords
        groups = build_param_groups(self.net, base_lr=base["lr"], weight_decay=base.get("weight_decay", 0.0),
                                    param_groups=self.optim_cfg.get("param_groups") or [],
                                    no_decay=self.optim_cfg.get("no_decay") or {})
        fused = {}
        if self.device.type == "cuda" and "fused" in inspect.signature(optimizer_factory.func).parameters:
            fused = {"fused": base.get("fused", True)}  # one kernel per step for Adam(W) on a GPU
        optimizer = optimizer_factory(groups, **fused)
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
