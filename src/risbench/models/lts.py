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

from collections.abc import Callable

import torch
from torch import nn

from risbench.models.common.attention import Block, grid_positions
from risbench.models.common.decoders import ConvBNReLU, DenseBaseDecoder, Stride16Neck, tokens_to_map
from risbench.models.common.heads import DenseReferringModel
from risbench.models.common.text import TextEncoder
from risbench.models.common.vision.swin import SwinTower


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
        return tokens_to_map(pixels, H, W), prior


class LTS(DenseReferringModel):
    """LTS base: fuse -> locate -> segment; Y = (B, channels, H/4, W/4). Approximate (see module doc)."""

    def __init__(self, vocab_size: int, text: Callable[..., TextEncoder], vision: dict, channels: int,
                 neck_channels: int, locate_layers: int, num_heads: int, decoder_channels: int,
                 loss: dict | None = None):
        super().__init__(vocab_size, text, channels, loss)
        self.vision = SwinTower(**vision, out_norms=True)
        dims = self.vision.dims
        text_dim = self.text.out_dim
        self.sentence = nn.ModuleList(nn.Linear(text_dim, neck_channels) for _ in dims[1:])
        self.neck = Stride16Neck(dims[1:], neck_channels)
        self.locate = Locate(neck_channels, text_dim, locate_layers, num_heads)
        self.segment = ConvBNReLU(neck_channels + 1, neck_channels)
        self.decoder = DenseBaseDecoder(neck_channels, dims[1::-1], decoder_channels, channels)

    def encode(self, batch: dict) -> dict:
        word_mask = batch["attention_mask"]
        words, s = self.text(batch["tokens"], word_mask)                      # (B, T, C_l), (B, C_l)
        feats = self.vision(batch["image"])                                    # 4 x (B, D_s, H_s, W_s)
        fm = self.neck(feats[1:], [proj(s) for proj in self.sentence])         # (B, C, H/16, W/16)
        fm, prior = self.locate(fm, words, word_mask, s)
        x = self.segment(torch.cat([fm, prior], dim=1))
        y = self.decoder(x, feats[1::-1])                                      # (B, channels, H/4, W/4)
        return {"Y": y, "L": words, "sentence": s, "l_mask": word_mask}
