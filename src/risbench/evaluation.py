"""Evaluation protocols: how a model's mask logits become binary masks that are scored.

Every evaluation pass scores two protocols at once (README "Metrics"): the common risbench protocol
(``eval.common``, the same for every model, metrics ``<split>/oIoU``) and the paper's own (``eval.paper``,
``<split>/paper/oIoU``). A protocol (conf/eval/<name>.yaml) fixes

* ``threshold``: foreground where sigmoid(logit) >= threshold (0.5 = the argmax of a two-class model);
* ``resolution``: ``original`` (undo the letterbox/stretch, score against the original-size ground truth)
  or ``input`` (score at the network input, ground truth resized there with nearest neighbour, LAVT's code);
* ``prec_op`` (``>=`` or ``>`` for prec@X) and ``empty_union_iou`` (IoU of an empty prediction of an empty
  target), which the metric applies.

`mode=predict` thresholds with the same code (`Protocol.original_masks`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from risbench.data.transforms import unmap_to_original
from risbench.errors import RisbenchError
from risbench.losses import resize_logits

RESOLUTIONS = ("original", "input")
PREC_OPS = (">=", ">")


def threshold_logit(threshold: float, key: str = "eval.threshold") -> float:
    """A probability threshold as the logit that predictions are compared with."""
    threshold = float(threshold)
    if not 0.0 < threshold < 1.0:
        raise RisbenchError(f"{key} must be a probability in (0, 1), got {threshold}")
    return math.log(threshold / (1.0 - threshold))


def masks_at_original_size(logits: torch.Tensor, batch: dict, logit_threshold: float) -> list[torch.Tensor]:
    """(B,1,h,w) mask logits -> per sample a binary (H_i, W_i) mask on the original image."""
    size = batch["image"].shape[-1]
    return [unmap_to_original(logits[i], batch["valid_box"][i], batch["orig_size"][i], size)[0] >= logit_threshold
            for i in range(logits.shape[0])]


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol (an ``eval.common`` / ``eval.paper`` node); ``key`` names it in messages."""

    name: str
    threshold: float
    resolution: str
    prec_op: str
    empty_union_iou: float
    headline: str = "oIoU"
    key: str = "eval.common"

    def __post_init__(self):
        if self.resolution not in RESOLUTIONS:
            raise RisbenchError(f"{self.key}.resolution must be one of {list(RESOLUTIONS)}, got {self.resolution!r}")
        if self.prec_op not in PREC_OPS:
            raise RisbenchError(f"{self.key}.prec_op must be one of {list(PREC_OPS)}, got {self.prec_op!r}")
        threshold_logit(self.threshold, f"{self.key}.threshold")

    @classmethod
    def from_config(cls, node, key: str) -> Protocol:
        options = dict(node)
        unknown = sorted(set(options) - set(cls.__dataclass_fields__) - {"key"})
        if unknown:
            raise RisbenchError(f"{key} has unknown keys {unknown}; known: {sorted(set(cls.__dataclass_fields__) - {'key'})}")
        return cls(**options, key=key)

    @property
    def logit_threshold(self) -> float:
        return threshold_logit(self.threshold, f"{self.key}.threshold")

    def metric_options(self) -> dict:
        return {"prec_op": self.prec_op, "empty_union_iou": self.empty_union_iou}

    def original_masks(self, logits: torch.Tensor, batch: dict) -> list[torch.Tensor]:
        """Per sample a binary mask at the original image size."""
        return masks_at_original_size(logits, batch, self.logit_threshold)

    def scored_masks(self, logits: torch.Tensor, batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Binary predictions and ground truths at this protocol's resolution."""
        if self.resolution == "input":
            logits = resize_logits(logits, tuple(batch["mask"].shape[-2:]))
            return list(logits[:, 0] >= self.logit_threshold), list(batch["mask"][:, 0] > 0.5)
        return self.original_masks(logits, batch), list(batch["orig_masks"])
