"""Segmentation losses shared by every model.

All take logits and a float ground truth in {0, 1}; shapes are given per function. Mean reduction.
A model composes them in its own ``loss()`` and returns named parts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=True) resize of (B,C,h,w) logits to ``size``; no-op when equal."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def bce_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    """Binary cross-entropy on (B,1,h,w) logits; ``pos_weight`` up-weights foreground pixels."""
    weight = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device, dtype=logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=weight)


def weighted_ce_loss(logits: torch.Tensor, target: torch.Tensor,
                     class_weights: Sequence[float] = (0.9, 1.1)) -> torch.Tensor:
    """Two-class cross-entropy on (B,2,h,w) logits (channel 0 = background), LAVT's [0.9, 1.1]."""
    weight = torch.tensor(class_weights, device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits, target.squeeze(1).long(), weight=weight)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice, per sample, averaged over classes then batch.

    (B,1,h,w) logits: sigmoid foreground Dice. (B,2,h,w) logits: softmax, Dice of background and
    foreground averaged (SADLR). Computed in fp32.
    """
    logits = logits.float()
    target = target.float()
    if logits.shape[1] == 1:
        probs, onehot = logits.sigmoid(), target
    else:
        probs = logits.softmax(dim=1)
        onehot = torch.cat([1 - target, target], dim=1)
    dims = (2, 3)
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (total + smooth)  # (B, C)
    return (1 - dice).mean()


def deep_supervision(losses: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted sum of per-output losses (auxiliary heads, iterative rounds)."""
    if len(losses) != len(weights):
        raise ValueError(f"deep supervision got {len(losses)} losses but {len(weights)} weights")
    return sum(w * l for w, l in zip(weights, losses))


def iterative_loss_weights(num_rounds: int, last_weight: float) -> list[float]:
    """Weights for ``num_rounds`` supervised rounds: the last gets ``last_weight``, the rest share 1 - it."""
    if num_rounds < 1:
        raise ValueError("need at least one supervised round")
    if num_rounds == 1:
        return [1.0]
    rest = (1.0 - last_weight) / (num_rounds - 1)
    return [rest] * (num_rounds - 1) + [last_weight]
