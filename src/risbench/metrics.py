"""Referring-segmentation metrics as one torchmetrics ``Metric`` with sum states (distributed-exact).

Per expression i with prediction P_i and ground truth G_i: I_i = |P_i & G_i|, U_i = |P_i | G_i|.

* ``oIoU`` (overall / cumulative IoU, the headline of most papers) = sum_i I_i / sum_i U_i
* ``mIoU`` = mean_i I_i / U_i (``empty_union_iou`` when U_i = 0)
* ``prec@X`` = fraction of expressions with IoU >= X (or > X with ``prec_op=">"``)
* the same per expression-length bucket, ``len1-2/oIoU``, ... (by-length tables)

Intersections and unions are integer sums, so a split scored over any number of processes gives exactly
the numbers of a single process (as long as each expression is scored once: see data/samplers.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric


class ReferringSegmentationMetrics(Metric):
    full_state_update = False
    higher_is_better = True

    def __init__(self, prec_thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9), prec_op: str = ">=",
                 empty_union_iou: float = 0.0, length_buckets: Sequence[Sequence[int]] | None = None, **kwargs):
        super().__init__(**kwargs)
        if prec_op not in (">=", ">"):
            raise ValueError(f"eval.prec_op must be '>=' or '>', got {prec_op!r}")
        self.prec_thresholds = [float(t) for t in prec_thresholds]
        self.prec_op = prec_op
        self.empty_union_iou = float(empty_union_iou)
        self.length_buckets = [(int(lo), int(hi)) for lo, hi in (length_buckets or [])]
        slots = 1 + len(self.length_buckets)  # slot 0 = whole split, then one per bucket
        self.add_state("intersection", torch.zeros(slots, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("union", torch.zeros(slots, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("iou_sum", torch.zeros(slots, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(slots, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("prec_hits", torch.zeros(slots, len(self.prec_thresholds), dtype=torch.long),
                       dist_reduce_fx="sum")

    def _bucket_slots(self, num_words: int) -> list[int]:
        slots = [0]
        last = len(self.length_buckets) - 1
        for index, (lo, hi) in enumerate(self.length_buckets):
            if lo <= num_words and (num_words <= hi or index == last):  # last bucket is open-ended
                slots.append(index + 1)
                break
        return slots

    def update(self, preds: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
               num_words: Sequence[int] | torch.Tensor | None = None) -> None:
        """``preds``/``targets``: per-sample boolean masks of equal shape (sizes may differ between samples)."""
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        thresholds = torch.tensor(self.prec_thresholds, dtype=torch.float64)
        for index, (pred, target) in enumerate(zip(preds, targets)):
            if pred.shape != target.shape:
                raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(target.shape)} differ")
            pred, target = pred.bool(), target.bool()
            inter = int((pred & target).sum())
            union = int((pred | target).sum())
            iou = inter / union if union else self.empty_union_iou
            passed = (iou >= thresholds) if self.prec_op == ">=" else (iou > thresholds)
            words = int(num_words[index]) if num_words is not None else 0
            for slot in self._bucket_slots(words) if self.length_buckets else [0]:
                self.intersection[slot] += inter
                self.union[slot] += union
                self.iou_sum[slot] += iou
                self.count[slot] += 1
                self.prec_hits[slot] += passed.to(self.prec_hits.device)

    def _slot_metrics(self, slot: int) -> dict[str, torch.Tensor]:
        count = self.count[slot].clamp(min=1).double()
        union = self.union[slot]
        out = {
            "oIoU": self.intersection[slot].double() / union.double() if union > 0 else torch.zeros((), dtype=torch.float64),
            "mIoU": self.iou_sum[slot] / count,
        }
        for k, threshold in enumerate(self.prec_thresholds):
            out[f"prec@{threshold:g}"] = self.prec_hits[slot, k].double() / count
        out["n"] = self.count[slot].double()
        return out

    def compute(self) -> dict[str, torch.Tensor]:
        result = self._slot_metrics(0)
        for index, (lo, hi) in enumerate(self.length_buckets):
            label = f"len{lo}+" if index == len(self.length_buckets) - 1 else f"len{lo}-{hi}"
            for key, value in self._slot_metrics(index + 1).items():
                result[f"{label}/{key}"] = value
        return result
