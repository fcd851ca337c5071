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
import torch.nn.functional as F
from torch import nn

from risbench.models.common.decoders import SimpleDecoding
from risbench.models.common.heads import DenseReferringModel
from risbench.models.common.text import TextEncoder
from risbench.models.common.vision.swin import SwinTower


# --- LAVT's own modules ---

def instance_norm_tokens(x: torch.Tensor) -> torch.Tensor:
    """InstanceNorm1d (no affine) of (B, N, D) tokens: each channel over the N positions, in fp32."""
    return F.instance_norm(x.float().transpose(1, 2)).transpose(1, 2)


class PWAM(nn.Module):
    """Pixel-word attention module: pixels (B,HW,D) attend to words (B,T,C_l) -> multi-modal F (B,HW,D).

    LAVT's 1x1 Conv1d layers are written as Linear on tokens (same weights, no transposes).
    """

    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        self.vis_project = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(text_dim, dim)
        self.value = nn.Linear(text_dim, dim)
        self.attn_out = nn.Linear(dim, dim)
        self.project_mm = nn.Linear(dim, dim)
        self.fused_attn = True

    def forward(self, x: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        vis = F.gelu(self.vis_project(x))                      # (B, HW, D)
        q = instance_norm_tokens(self.query(x)).to(vis.dtype)  # (B, HW, D)
        m = word_mask[:, :, None].to(vis.dtype)                # (B, T, 1)
        k, v = self.key(words) * m, self.value(words) * m      # (B, T, D), padded words zeroed
        bias = (1e4 * word_mask.to(q.dtype) - 1e4)[:, None, :]  # (B, 1, T)
        if self.fused_attn:  # one head, scale D^-0.5 as in LAVT
            lang = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], attn_mask=bias[:, None])[:, 0]
        else:
            att = (q @ k.transpose(1, 2)) * q.shape[-1] ** -0.5 + bias
            lang = att.softmax(dim=-1) @ v                     # (B, HW, D)
        lang = instance_norm_tokens(self.attn_out(lang)).to(vis.dtype)
        return F.gelu(self.project_mm(vis * lang))


class LanguageGate(nn.Module):
    """tanh(W2 ReLU(W1 F)) (bias-free).

    ``init``: ``lavt`` = trunc-normal(std 0.02), what LAVT's code ends up with (its constructor zeroes both
    weights, then ``init_weights`` re-initialises every Linear of the backbone); ``zero`` = the constructor
    alone: the next stage starts as pure Swin, but both weights then get exactly zero gradient forever.
    """

    def __init__(self, dim: int, init: str = "lavt"):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim, bias=False)
        self.fc2 = nn.Linear(dim, dim, bias=False)
        for fc in (self.fc1, self.fc2):
            if init == "zero":
                nn.init.zeros_(fc.weight)
            elif init == "lavt":
                nn.init.trunc_normal_(fc.weight, std=0.02)
            else:
                raise ValueError(f"model.gate_init must be lavt|zero, got {init!r}")

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc2(F.relu(self.fc1(f))))


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
