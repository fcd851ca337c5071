"""Pixel-word fusion blocks of LAVT-style backbones (LAVT, SADLR's base, LGFormer's ``fusion=pwam`` rows).

`PWAM` (LAVT's pixel-word attention module) turns Swin tokens and word features into multi-modal tokens;
`LanguageGate` is the tanh gate that weighs them before they are added back to the visual pathway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from risbench.errors import RisbenchError


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
                raise RisbenchError(f"gate_init (model.gate_init; model.base.gate_init under SADLR; "
                                    f"model.encoder.gate_init under LGFormer) must be one of ['lavt', 'zero'], "
                                    f"got {init!r}")

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc2(F.relu(self.fc1(f))))
