"""LAVT: Language-Aware Vision Transformer (Yang et al., CVPR 2022), as SADLR uses it.

Swin-B with a pixel-word attention module (PWAM) and a language gate after every stage, BERT-base word
features, and LAVT's multi-scale decoder (``SimpleDecoding``) ending in a 1x1 two-class classifier.
Details follow the public LAVT code (spec: ``papers/sadlr.md`` §2.2)::

    image (B,3,480,480) --Swin stage s--> x_s --PWAM(x_s, L)--> F_s --LN--> decoder input s
                                           x_s + tanh-gate(F_s) * F_s --> stage s+1
    decoder: F_4 (1024,15²) -> +F_3 -> +F_2 -> +F_1 = Y (512,120²) -> Conv1x1 -> (2,120²)

`LAVT` is a `DenseReferringModel` (``encode(batch) -> Y``, the two-class classifier and losses), so SADLR
can put its head on it; the text encoder is the configured one (``model.text``, BERT-base in the paper).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from risbench.models.common.decoders import SimpleDecoding
from risbench.models.common.fusion import PWAM, LanguageGate
from risbench.models.common.heads import DenseReferringModel
from risbench.models.common.text import TextEncoder
from risbench.models.common.vision.swin import SwinTower


class LanguageAwareSwin(nn.Module):
    """Swin stages with PWAM + gate after each; returns the normalised F_s of every stage (B,D_s,H_s,W_s).

    The last stage has no gate: its gated tokens would feed no further stage (LAVT computes and drops them).
    """

    def __init__(self, vision: dict, text_dim: int, gate_init: str = "lavt"):
        super().__init__()
        self.swin = SwinTower(**vision)
        self.dims = self.swin.dims
        self.pwams = nn.ModuleList(PWAM(d, text_dim) for d in self.dims)
        self.gates = nn.ModuleList(LanguageGate(d, gate_init) for d in self.dims[:-1])
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in self.dims)

    def forward(self, image: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> list[torch.Tensor]:
        x = self.swin.embed(image)                             # (B, H/4, W/4, D_1)
        outs = []
        for s, pwam in enumerate(self.pwams):
            x = self.swin.stage(s, x)                          # (B, H_s, W_s, D_s)
            B, H, W, D = x.shape
            tokens = x.reshape(B, H * W, D)
            f = pwam(tokens, words, word_mask)                 # (B, H_s W_s, D_s)
            if s < len(self.gates):
                x = (tokens + self.gates[s](f) * f).view(B, H, W, D)
            outs.append(self.norms[s](f).transpose(1, 2).reshape(B, D, H, W))
        return outs


class LAVT(DenseReferringModel):
    """LAVT (Swin + PWAM + gates, BERT, SimpleDecoding). ``channels`` = decoder width = Y's C (512)."""

    def __init__(self, vocab_size: int, text: Callable[..., TextEncoder], vision: dict, channels: int,
                 gate_init: str, loss: dict | None = None):
        super().__init__(vocab_size, text, channels, loss)
        self.vision = LanguageAwareSwin(vision, text_dim=self.text.out_dim, gate_init=gate_init)
        dims = self.vision.dims
        self.decoder = SimpleDecoding(dims[-1], dims[-2::-1], channels)

    def encode(self, batch: dict) -> dict:
        word_mask = batch["attention_mask"]
        words, sentence = self.text(batch["tokens"], word_mask)  # (B, T, C_l), (B, C_l)
        feats = self.vision(batch["image"], words, word_mask)  # per stage (B, D_s, H_s, W_s)
        y = self.decoder(feats[-1], feats[-2::-1])             # (B, C, H/4, W/4)
        return {"Y": y, "L": words, "sentence": sentence, "l_mask": word_mask}
