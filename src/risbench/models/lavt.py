"""LAVT: Language-Aware Vision Transformer (Yang et al., CVPR 2022), as SADLR uses it.

Swin-B with a pixel-word attention module (PWAM) and a language gate after every stage, BERT-base word
features, and LAVT's multi-scale decoder (``SimpleDecoding``) ending in a 1x1 two-class classifier.
Details follow the public LAVT code (spec: ``papers/sadlr.md`` §2.2)::

    image (B,3,480,480) --Swin stage s--> x_s --PWAM(x_s, L)--> F_s --LN--> decoder input s
                                           x_s + tanh-gate(F_s) * F_s --> stage s+1
    decoder: F_4 (1024,15²) -> +F_3 -> +F_2 -> +F_1 = Y (512,120²) -> Conv1x1 -> (2,120²)

This file also holds what every dense base of SADLR shares (`DenseReferringModel`: the ``encode(batch)
-> dict(Y, L, l_mask)`` interface, the classifier, the two-class losses) and the decoder, reused by the
LTS and VLT bases.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from risbench.losses import deep_supervision, dice_loss, resize_logits, weighted_ce_loss
from risbench.models.base import RISModel
from risbench.models.common.swin import SwinTower
from risbench.models.common.text import BertTextEncoder


# --- two-class outputs: losses and the foreground logit (shared by LAVT, LTS, VLT and the SADLR heads) ---

def two_class_loss(logits: torch.Tensor, mask: torch.Tensor, name: str = "ce",
                   class_weights: Sequence[float] = (0.9, 1.1)) -> torch.Tensor:
    """Loss of (B,2,h,w) logits against a (B,1,S,S) mask, at the mask's resolution (logits upsampled)."""
    logits = resize_logits(logits.float(), tuple(mask.shape[-2:]))
    if name == "ce":
        return weighted_ce_loss(logits, mask, class_weights)
    if name == "dice":
        return dice_loss(logits, mask)
    if name == "dice_ce":
        return dice_loss(logits, mask) + weighted_ce_loss(logits, mask, class_weights)
    raise ValueError(f"model.loss.name must be ce|dice|dice_ce, got {name!r}")


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


def masked_mean(words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B,T,C) word features over the real tokens -> (B,C)."""
    m = word_mask.to(words.dtype)[:, :, None]
    return (words * m).sum(1) / m.sum(1).clamp(min=1)


class DenseReferringModel(RISModel):
    """A referring segmenter ending in multi-modal maps Y (B, C, H/4, W/4) and a 1x1 classifier.

    Subclasses implement `encode`; SADLR calls it and replaces the classifier with its own head.
    """

    def __init__(self, vocab_size: int, text: dict, channels: int, loss: dict | None = None):
        super().__init__()
        self.text = BertTextEncoder(vocab_size=vocab_size, **text)
        self.out_channels = channels
        self.loss_cfg = dict(loss or {})
        self.classifier = nn.Conv2d(channels, 2, 1)

    @abstractmethod
    def encode(self, batch: dict) -> dict:
        """-> dict(Y=(B,C,H/4,W/4), L=(B,T,C_l) word features, l_mask=(B,T))."""

    def forward(self, batch: dict) -> dict:
        enc = self.encode(batch)
        return {"logits": [self.classifier(enc["Y"])], "size": tuple(batch["image"].shape[-2:])}

    def loss(self, outputs: dict, batch: dict) -> dict:
        return supervise_rounds(outputs["logits"], batch["mask"], [1.0], **self.loss_cfg)

    def mask_logits(self, outputs: dict) -> torch.Tensor:
        return foreground_logit(outputs["logits"][-1], outputs["size"])

    def load_pretrained(self) -> None:
        """Load every pretrained part (BERT directory, Swin release file) that its config asks for."""
        for module in self.modules():
            if isinstance(module, (BertTextEncoder, SwinTower)) and module.pretrained:
                module.load_pretrained()


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


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SimpleDecoding(nn.Module):
    """LAVT's decoder: from the coarsest map, ``x = 2 x ConvBNReLU(cat(up(x), skip))`` per finer skip."""

    def __init__(self, in_dim: int, skip_dims: Sequence[int], hidden: int):
        super().__init__()
        dims = [in_dim, *[hidden] * (len(skip_dims) - 1)]
        self.stages = nn.ModuleList(nn.Sequential(ConvBNReLU(d + s, hidden), ConvBNReLU(hidden, hidden))
                                    for d, s in zip(dims, skip_dims))

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        for stage, skip in zip(self.stages, skips):            # skips from coarse to fine
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            x = stage(torch.cat([x, skip], dim=1))
        return x


class LAVT(DenseReferringModel):
    """LAVT (Swin + PWAM + gates, BERT, SimpleDecoding). ``channels`` = decoder width = Y's C (512)."""

    def __init__(self, vocab_size: int, text: dict, vision: dict, loss: dict | None = None, channels: int = 512,
                 gate_init: str = "lavt"):
        super().__init__(vocab_size, text, channels, loss)
        self.vision = LanguageAwareSwin(vision, text_dim=self.text.hidden_size, gate_init=gate_init)
        dims = self.vision.dims
        self.decoder = SimpleDecoding(dims[-1], dims[-2::-1], channels)

    def encode(self, batch: dict) -> dict:
        words, word_mask = self.text(batch["tokens"], batch["attention_mask"])  # (B, T, C_l)
        feats = self.vision(batch["image"], words, word_mask)  # per stage (B, D_s, H_s, W_s)
        y = self.decoder(feats[-1], feats[-2::-1])             # (B, C, H/4, W/4)
        return {"Y": y, "L": words, "l_mask": word_mask}
