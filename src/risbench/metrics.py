"""Referring-segmentation metrics as one torchmetrics ``Metric`` with integer states (distributed-exact).

Per expression i with prediction P_i and ground truth G_i: I_i = |P_i & G_i|, U_i = |P_i | G_i|.

* ``oIoU`` (overall / cumulative IoU, the headline of most papers) = sum_i I_i / sum_i U_i
* ``mIoU`` = mean_i I_i / U_i (``empty_union_iou`` when U_i = 0), a correctly rounded sum (``math.fsum``)
* ``prec@X`` = fraction of expressions with IoU >= X (or > X with ``prec_op=">"``)
* the same per expression-length bucket, ``len1-2/oIoU``, ... (by-length tables)

The states are each expression's integer (I_i, U_i, words), so a split scored over any number of processes,
in any order, gives exactly the numbers of a single process (as long as each expression is scored once:
see data/samplers.py), and every figure is computed once, in float64, at the end.
"""

from __future__ import annotations

import math
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
        for name in ("intersection", "union", "words"):  # one entry per expression
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(self, preds: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
               num_words: Sequence[int] | torch.Tensor | None = None) -> None:
        """``preds``/``targets``: per-sample boolean masks of equal shape (sizes may differ between samples)."""
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        if not len(preds):
            return
        for pred, target in zip(preds, targets):
            if pred.shape != target.shape:
                raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(target.shape)} differ")
        pairs = [(p.bool(), t.bool()) for p, t in zip(preds, targets)]
        # stacked on the device: no host sync per sample
        self.intersection.append(torch.stack([(p & t).sum() for p, t in pairs]).long())
        self.union.append(torch.stack([(p | t).sum() for p, t in pairs]).long())
        words = num_words if num_words is not None else [0] * len(preds)
        self.words.append(torch.as_tensor(words, dtype=torch.long, device=self.intersection[-1].device).reshape(-1))

    def _values(self, name: str) -> list[int]:
        state = getattr(self, name)
        if isinstance(state, list):
            state = torch.cat(state) if state else torch.zeros(0, dtype=torch.long)
        return state.tolist()

    def _bucket(self, num_words: int) -> int | None:
        """Index of the length bucket holding ``num_words`` (the last bucket is open-ended)."""
        last = len(self.length_buckets) - 1
        for index, (lo, hi) in enumerate(self.length_buckets):
            if lo <= num_words and (num_words <= hi or index == last):
                return index
        return None

    def _summary(self, pairs: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        inter, union = sum(i for i, _ in pairs), sum(u for _, u in pairs)
        ious = [i / u if u else self.empty_union_iou for i, u in pairs]
        count = max(len(ious), 1)
        out = {"oIoU": inter / union if union else 0.0, "mIoU": math.fsum(ious) / count}
        for threshold in self.prec_thresholds:
            hits = sum((iou >= threshold) if self.prec_op == ">=" else (iou > threshold) for iou in ious)
            out[f"prec@{threshold:g}"] = hits / count
        out["n"] = float(len(ious))
        return {key: torch.tensor(value, dtype=torch.float64) for key, value in out.items()}

    def compute(self) -> dict[str, torch.Tensor]:
        pairs = list(zip(self._values("intersection"), self._values("union")))
        result = self._summary(pairs)
        buckets = [self._bucket(w) for w in self._values("words")]
        for index, (lo, hi) in enumerate(self.length_buckets):
            label = f"len{lo}+" if index == len(self.length_buckets) - 1 else f"len{lo}-{hi}"
            members = [pair for pair, bucket in zip(pairs, buckets) if bucket == index]
            result.update({f"{label}/{key}": value for key, value in self._summary(members).items()})
        return result
