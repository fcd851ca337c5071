"""SADLR: Semantics-Aware Dynamic Localization and Refinement (Yang et al., AAAI 2023).

A refinement head on top of any dense referring model ("base") whose final 1x1 classifier is removed.
The base gives multi-modal maps Y (B, C, H/4, W/4) and word features L. SADLR runs n rounds with shared
weights (spec ``papers/sadlr.md`` §2.3)::

    Q_1 = Linear(masked_mean(L))                                  # sentence -> query (B, C)
    round i:  Q_i = Q_{i-1} + AvgPool(argmax R_{i-1}, Y)           # (or "replace": Q_i = pooled object)
              Z = Y; for each layer j: Z = ReLU(LN(Z @ K_j(Q_i)))  # dynamic 1x1 kernels from the query
              R_i = Linear(Z) -> (B, 2, H/4, W/4)
    loss = sum_i lambda_i Dice(up(R_i), GT); prediction = R_n

`SADLR` (``model=sadlr``) composes a base (``model/base=lavt|lts|vlt``) with a head
(``model/head=none|cgan|sadlr``, Table 3); the base trains with SADLR's ``model.loss``. ``model/head=none``,
or ``model.head.iterations=0``, is exactly the base model with its own classifier.
The CGAN head is a stand-in for Luo et al.'s cascade grouped attention (the paper gives no details):
stacked cross-attention layers in which the pixels of Y attend to the words, a classifier and an
auxiliary loss after each (spec §2.4), sized to ~+10 GMACs at 480 px.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from risbench.errors import RisbenchError
from risbench.losses import iterative_loss_weights
from risbench.models.base import RISModel
from risbench.models.common.attention import CrossAttentionBlock
from risbench.models.common.heads import (DenseReferringModel, check_loss_options, foreground_logit,
                                          supervise_rounds)


def parse_structure(structure: str) -> list[int]:
    """Table 4b kernel structure: ``d128-512`` -> [128, 512]; ``d128-512x2`` -> [128, 512, 128, 512]."""
    match = re.fullmatch(r"d(\d+(?:-\d+)*)(?:x(\d+))?", str(structure))
    if match is None:
        raise RisbenchError(f"model.head.structure must look like d128-512 or d128-512x2, got {structure!r}")
    return [int(d) for d in match.group(1).split("-")] * int(match.group(2) or 1)


def round_weights(rounds: int, last_loss_weight: float, loss_weights: Sequence[float] | None) -> list[float]:
    """Explicit ``loss_weights``, else the spec's rule: the last round ``last_loss_weight``, the rest equal."""
    if loss_weights is None:
        return iterative_loss_weights(rounds, last_loss_weight)
    if len(loss_weights) != rounds:
        raise RisbenchError(f"model.head.loss_weights has {len(loss_weights)} weights for {rounds} supervised rounds")
    return list(loss_weights)


class DynamicConv(nn.Module):
    """1x1 conv whose (d_in, d_out) kernel is generated from the query: ``ReLU(LN(Z @ K(Q)))``.

    ``bmm`` with per-sample kernels = a grouped 1x1 conv with one group per sample.
    """

    def __init__(self, query_dim: int, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.generate = nn.Linear(query_dim, in_dim * out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def kernel(self, query: torch.Tensor) -> torch.Tensor:
        return self.generate(query).view(-1, self.in_dim, self.out_dim)  # (B, d_in, d_out)

    def forward(self, z: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(torch.bmm(z, self.kernel(query))))  # (B, HW, d_out)


class SADLRHead(nn.Module):
    """The SADLR refinement head; ``forward(Y, L, l_mask, sentence)`` returns the n score maps [R_1 .. R_n]."""

    def __init__(self, channels: int, text_dim: int, iterations: int, structure: str, query_update: str,
                 last_loss_weight: float, loss_weights: Sequence[float] | None = None, detach_object: bool = False):
        super().__init__()
        if query_update not in ("sum", "replace"):
            raise RisbenchError(f"model.head.query_update must be sum|replace, got {query_update!r}")
        if iterations < 0:
            raise RisbenchError(f"model.head.iterations must be >= 0 (0 = the base's own classifier), got {iterations}")
        self.iterations = iterations
        self.query_update = query_update
        self.detach_object = detach_object
        # no rounds (Table 4a n=0): SADLR keeps the base's own classifier instead
        self.loss_weights = round_weights(iterations, last_loss_weight, loss_weights) if iterations else []
        self.sentence = nn.Linear(text_dim, channels)
        dims = [channels, *parse_structure(structure)]
        self.layers = nn.ModuleList(DynamicConv(channels, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.classifier = nn.Linear(dims[-1], 2)  # shared 1x1 conv on Z; channel 0 background, 1 object

    def pool_object(self, y: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """O = mean of Y over the previous round's argmax mask (B, C), in fp32; an empty mask gives 0."""
        with torch.autocast(y.device.type, enabled=False):
            mask = (previous[:, 1] > previous[:, 0]).flatten(1).float()     # (B, HW) argmax, no gradient
            y = y.detach() if self.detach_object else y
            total = torch.bmm(mask[:, None], y.float())[:, 0]              # (B, C)
            return total / mask.sum(1, keepdim=True).clamp(min=1)

    def update_query(self, query: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
        return query + obj if self.query_update == "sum" else obj

    def forward(self, y: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor,
                sentence: torch.Tensor) -> list[torch.Tensor]:
        B, C, H, W = y.shape
        tokens = y.flatten(2).transpose(1, 2)                               # (B, HW, C)
        query = self.sentence(sentence)                                     # Q_1 = S (B, C)
        rounds: list[torch.Tensor] = []
        for _ in range(self.iterations):
            if rounds:
                query = self.update_query(query, self.pool_object(tokens, rounds[-1]))
            z = tokens
            for layer in self.layers:                                       # the same weights every round
                z = layer(z, query)                                         # (B, HW, d_j)
            rounds.append(self.classifier(z).transpose(1, 2).reshape(B, 2, H, W))
        return rounds


class CGANHead(nn.Module):
    """Cascade cross-attention refiner (CGAN stand-in): Y -> d, ``layers`` x [pixels attend to words,
    MLP], a shared classifier after each step (auxiliary losses); the last step is the prediction."""

    def __init__(self, channels: int, text_dim: int, layers: int, dim: int, num_heads: int, mlp_dim: int,
                 last_loss_weight: float, loss_weights: Sequence[float] | None = None):
        super().__init__()
        self.loss_weights = round_weights(layers, last_loss_weight, loss_weights)
        self.proj = nn.Linear(channels, dim)
        self.layers = nn.ModuleList(CrossAttentionBlock(dim, text_dim, num_heads, mlp_dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, 2)

    def forward(self, y: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor,
                sentence: torch.Tensor) -> list[torch.Tensor]:
        B, C, H, W = y.shape
        x = self.proj(y.flatten(2).transpose(1, 2))                        # (B, HW, d)
        ignore = word_mask == 0
        steps = []
        for layer in self.layers:
            x = layer(x, words, ignore)
            steps.append(self.classifier(self.norm(x)).transpose(1, 2).reshape(B, 2, H, W))
        return steps


class SADLR(RISModel):
    """``base`` (a `DenseReferringModel`, built with ``vocab_size``) + ``head`` (built with ``channels`` and
    the text width; none = the base's own classifier). Both are config nodes (``model/base=``, ``model/head=``),
    so a new base or head is a new file plus a YAML."""

    def __init__(self, vocab_size: int, base: Callable[..., DenseReferringModel],
                 head: Callable[..., nn.Module] | None, loss: dict | None = None):
        super().__init__()
        self.loss_cfg = check_loss_options(loss)
        self.base = base(vocab_size=vocab_size, loss=loss)
        self.head = head(channels=self.base.out_channels, text_dim=self.base.text.out_dim) if head else None
        if getattr(self.head, "iterations", None) == 0:
            self.head = None  # Table 4a row n=0 is the base model itself
        if self.head is not None:
            self.base.classifier = None  # replaced by the head

    def forward(self, batch: dict) -> dict:
        if self.head is None:
            return self.base(batch)
        enc = self.base.encode(batch)
        rounds = self.head(enc["Y"], enc["L"], enc["l_mask"], enc["sentence"])
        return {"logits": rounds, "size": tuple(batch["image"].shape[-2:])}

    def loss(self, outputs: dict, batch: dict) -> dict:
        if self.head is None:
            return self.base.loss(outputs, batch)
        return supervise_rounds(outputs["logits"], batch["mask"], self.head.loss_weights, **self.loss_cfg)

    def mask_logits(self, outputs: dict) -> torch.Tensor:
        return foreground_logit(outputs["logits"][-1], outputs["size"])  # last round only
