"""LTS base ("Locate then Segment", Jing et al., CVPR 2021) on Swin-B + BERT, for SADLR's Table 3.

APPROXIMATE re-implementation: SADLR re-implements LTS with BERT + Swin-B, the Dice loss and LAVT's
schedule, and describes it no further (spec §2.4). Built from the LTS paper's outline:

    fuse:    Swin stages 2-4, each 1x1-projected to C and multiplied by a sentence vector, gathered at
             stride 16 -> F_m (B, C, H/16, W/16)
    locate:  transformer layers over [pixels of F_m; words] and a relevance filter (a kernel made from the
             sentence) -> position prior P (B, 1, H/16, W/16)
    segment: ConvBNReLU(cat(F_m, P)) and LAVT's decoder with skips from stages 2 and 1 -> Y (B, 512, H/4, W/4)

Deviations from LTS: Swin/BERT instead of DarkNet/GRU (as in SADLR), the prior gets no separate
localisation loss (it is learnt through the mask loss). Widths default to ~133 GMACs at 480 px (Table 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from risbench.models.common.attention import Block, sinusoidal_positions
from risbench.models.common.swin import SwinTower
from risbench.models.lavt import ConvBNReLU, DenseReferringModel, SimpleDecoding, masked_mean


def grid_positions(h: int, w: int, dim: int) -> torch.Tensor:
    """2-D sine/cosine positions (h*w, dim): half the channels encode the row, half the column."""
    rows = sinusoidal_positions(h, dim // 2)[:, None].expand(h, w, dim // 2)
    cols = sinusoidal_positions(w, dim // 2)[None].expand(h, w, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(h * w, dim)


class Stride16Neck(nn.Module):
    """Stage maps (stride 8, 16, 32) -> 1x1 ConvBNReLU to C each, resized to stride 16, concat, 3x3 fuse."""

    def __init__(self, dims: Sequence[int], channels: int):
        super().__init__()
        self.proj = nn.ModuleList(ConvBNReLU(d, channels, 1) for d in dims)
        self.fuse = ConvBNReLU(len(dims) * channels, channels)

    def forward(self, feats: Sequence[torch.Tensor], gains: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        size = feats[1].shape[-2:]
        levels = []
        for i, (proj, f) in enumerate(zip(self.proj, feats)):
            x = proj(f)
            if gains is not None:
                x = x * gains[i][:, :, None, None]              # cross-modal fusion by product
            levels.append(F.interpolate(x, size=size, mode="bilinear", align_corners=True))
        return self.fuse(torch.cat(levels, dim=1))            # (B, C, H/16, W/16)


class DenseBaseDecoder(nn.Module):
    """Stride-16 map + stage 2/1 skips -> LAVT's decoder at ``hidden`` -> 1x1 to ``channels`` (= Y)."""

    def __init__(self, in_dim: int, skip_dims: Sequence[int], hidden: int, channels: int):
        super().__init__()
        self.decode = SimpleDecoding(in_dim, skip_dims, hidden)
        self.project = nn.Conv2d(hidden, channels, 1) if hidden != channels else nn.Identity()

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.project(self.decode(x, skips))


class Locate(nn.Module):
    """Visual-textual transformer over [pixels; words] + relevance filter -> refined pixels, prior P."""

    def __init__(self, channels: int, text_dim: int, layers: int, num_heads: int):
        super().__init__()
        self.word_proj = nn.Linear(text_dim, channels)
        self.blocks = nn.ModuleList(Block(channels, num_heads) for _ in range(layers))
        self.norm = nn.LayerNorm(channels)
        self.filter = nn.Linear(text_dim, channels)         # sentence -> relevance kernel

    def forward(self, fm: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor,
                sentence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, C, H, W = fm.shape
        pixels = fm.flatten(2).transpose(1, 2) + grid_positions(H, W, C).to(fm)  # (B, HW, C)
        x = torch.cat([pixels, self.word_proj(words)], dim=1)                   # (B, HW+T, C)
        ignore = torch.cat([word_mask.new_ones(B, H * W), word_mask], dim=1) == 0
        for block in self.blocks:
            x = block(x, key_padding_mask=ignore)
        pixels = self.norm(x[:, : H * W])                                          # (B, HW, C)
        relevance = pixels @ self.filter(sentence)[:, :, None] * C ** -0.5        # (B, HW, 1)
        prior = relevance.sigmoid().transpose(1, 2).reshape(B, 1, H, W)
        return pixels.transpose(1, 2).reshape(B, C, H, W), prior


class LTS(DenseReferringModel):
    """LTS base: fuse -> locate -> segment; Y = (B, channels, H/4, W/4). Approximate (see module doc)."""

    def __init__(self, vocab_size: int, text: dict, vision: dict, loss: dict | None = None, channels: int = 512,
                 neck_channels: int = 512, locate_layers: int = 2, num_heads: int = 8, decoder_channels: int = 256):
        super().__init__(vocab_size, text, channels, loss)
        self.vision = SwinTower(**vision, out_norms=True)
        dims = self.vision.dims
        text_dim = self.text.hidden_size
        self.sentence = nn.ModuleList(nn.Linear(text_dim, neck_channels) for _ in dims[1:])
        self.neck = Stride16Neck(dims[1:], neck_channels)
        self.locate = Locate(neck_channels, text_dim, locate_layers, num_heads)
        self.segment = ConvBNReLU(neck_channels + 1, neck_channels)
        self.decoder = DenseBaseDecoder(neck_channels, dims[1::-1], decoder_channels, channels)

    def encode(self, batch: dict) -> dict:
        words, word_mask = self.text(batch["tokens"], batch["attention_mask"])  # (B, T, C_l)
        feats = self.vision(batch["image"])                                    # 4 x (B, D_s, H_s, W_s)
        s = masked_mean(words, word_mask)
        fm = self.neck(feats[1:], [proj(s) for proj in self.sentence])         # (B, C, H/16, W/16)
        fm, prior = self.locate(fm, words, word_mask, s)
        x = self.segment(torch.cat([fm, prior], dim=1))
        y = self.decoder(x, feats[1::-1])                                      # (B, channels, H/4, W/4)
        return {"Y": y, "L": words, "l_mask": word_mask, "prior": prior}
