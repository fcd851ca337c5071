"""Two-class outputs and the dense-model base they belong to (LAVT, the LTS/VLT bases, SADLR's heads).

A two-class model predicts (B, 2, h, w) logits (channel 0 = background); its foreground logit is
``fg - bg``, so ``logit >= 0`` is the argmax. `DenseReferringModel` is a referring segmenter that ends in
multi-modal maps Y (B, C, H/4, W/4) and a 1x1 two-class classifier; SADLR calls its `encode` and puts
its own head on Y.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import nn

from risbench.errors import RisbenchError
from risbench.losses import deep_supervision, dice_loss, resize_logits, weighted_ce_loss
from risbench.models.base import RISModel
from risbench.models.common.text import TextEncoder

TWO_CLASS_LOSSES = ("ce", "dice", "dice_ce")


def two_class_loss(logits: torch.Tensor, mask: torch.Tensor, name: str = "ce",
                   class_weights: Sequence[float] = (0.9, 1.1)) -> torch.Tensor:
    """Loss of (B,2,h,w) logits against a (B,1,S,S) mask, at the mask's resolution (logits upsampled)."""
    logits = resize_logits(logits.float(), tuple(mask.shape[-2:]))
    if name == "ce":
        return weighted_ce_loss(logits, mask, class_weights)
    if name == "dice":
        return dice_loss(logits, mask)
    return dice_loss(logits, mask) + weighted_ce_loss(logits, mask, class_weights)


def supervise_rounds(logits: Sequence[torch.Tensor], mask: torch.Tensor, weights: Sequence[float],
                     name: str = "ce", class_weights: Sequence[float] = (0.9, 1.1)) -> dict:
    """Weighted sum of one loss per predicted map (iterative rounds / cascade steps), with the parts."""
    parts = [two_class_loss(r, mask, name, class_weights) for r in logits]
    out = {"loss": deep_supervision(parts, weights)}
    if len(parts) > 1:
        out.update({f"{name}_round{i + 1}": part.detach() for i, part in enumerate(parts)})
    return out


def foreground_logit(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B,2,h,w) -> (B,1,S,S) ``fg - bg`` after LAVT's bilinear (align_corners) upsampling to the input."""
    logits = resize_logits(logits.float(), tuple(size))
    return logits[:, 1:2] - logits[:, 0:1]


def check_loss_options(loss: dict | None) -> dict:
    """``model.loss`` of a two-class model: ``name`` (ce|dice|dice_ce) and ``class_weights``."""
    loss = dict(loss or {})
    if loss.get("name", "ce") not in TWO_CLASS_LOSSES:
        raise RisbenchError(f"model.loss.name must be one of {list(TWO_CLASS_LOSSES)}, got {loss['name']!r}")
    return loss


class DenseReferringModel(RISModel):
    """A referring segmenter ending in multi-modal maps Y (B, C, H/4, W/4) and a 1x1 classifier.

    ``text`` builds the text encoder (a ``_partial_`` config node, called with ``vocab_size``).
    Subclasses implement `encode`; SADLR calls it and replaces the classifier with its own head.
    """

    def __init__(self, vocab_size: int, text: Callable[..., TextEncoder], channels: int, loss: dict | None = None):
        super().__init__()
        self.text = text(vocab_size=vocab_size)
        self.out_channels = channels
        self.loss_cfg = check_loss_options(loss)
        self.classifier = nn.Conv2d(channels, 2, 1)

    @abstractmethod
    def encode(self, batch: dict) -> dict:
        """-> dict(Y=(B,C,H/4,W/4), L=(B,T,C_l) word features, sentence=(B,C_l), l_mask=(B,T))."""

    def forward(self, batch: dict) -> dict:
        enc = self.encode(batch)
        return {"logits": [self.classifier(enc["Y"])], "size": tuple(batch["image"].shape[-2:])}

    def loss(self, outputs: dict, batch: dict) -> dict:
        return supervise_rounds(outputs["logits"], batch["mask"], [1.0], **self.loss_cfg)

    def mask_logits(self, outputs: dict) -> torch.Tensor:
        return foreground_logit(outputs["logits"][-1], outputs["size"])
