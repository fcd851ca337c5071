"""VLT base (Vision-Language Transformer, Ding et al., ICCV 2021) on Swin-B + BERT, for SADLR's Table 3.

APPROXIMATE re-implementation: SADLR re-implements VLT with BERT + Swin-B, the Dice loss and LAVT's
schedule, and describes it no further (spec §2.4). Built from the VLT paper's outline:

    spatial-dynamic fusion: Swin stages 2-4 gathered at stride 16; every pixel gets its own language
                            vector by attending to the words, fused by product -> F (B, C, H/16, W/16)
    transformer encoder over F's pixels (+ 2-D positions) -> memory
    query generation: N_q queries, each a word-attention-weighted sum of word features whose weights
                      depend on the image (one learnt spatial attention per query)
    transformer decoder: queries attend to the memory; query balance: a confidence per query
    mask decoding: memory modulated by the confidence-weighted query response, then LAVT's decoder with
                   stage 2/1 skips -> Y (B, 512, H/4, W/4)

Widths default to ~143 GMACs at 480 px (Table 3).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers import Mlp
from torch import nn

from risbench.models.common.attention import Attention, Block, CrossAttentionBlock, grid_positions
from risbench.models.common.decoders import DenseBaseDecoder, Stride16Neck, tokens_to_map
from risbench.models.common.heads import DenseReferringModel
from risbench.models.common.text import TextEncoder
from risbench.models.common.vision.swin import SwinTower


class SpatialDynamicFusion(nn.Module):
    """Per-pixel language vector by pixel-word attention; fused as ``pixels * lang`` -> 1x1 projection."""

    def __init__(self, channels: int, text_dim: int, num_heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = Attention(channels, num_heads, context_dim=text_dim)
        self.out = nn.Linear(2 * channels, channels)

    def forward(self, pixels: torch.Tensor, words: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
        lang = self.attn(self.norm(pixels), words, key_padding_mask=ignore)  # (B, HW, C)
        return self.out(torch.cat([pixels, pixels * lang], dim=-1))


class QueryGeneration(nn.Module):
    """N_q queries from the words, each weighting them by its own view of the image (B, N_q, C)."""

    def __init__(self, channels: int, text_dim: int, num_queries: int):
        super().__init__()
        self.spatial = nn.Linear(channels, num_queries)   # one spatial attention map per query
        self.word_key = nn.Linear(text_dim, channels)
        self.word_value = nn.Linear(text_dim, channels)

    def forward(self, memory: torch.Tensor, words: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
        where = self.spatial(memory).softmax(dim=1)                         # (B, HW, N_q)
        seen = where.transpose(1, 2) @ memory                               # (B, N_q, C)
        score = seen @ self.word_key(words).transpose(1, 2) * seen.shape[-1] ** -0.5  # (B, N_q, T)
        score = score.masked_fill(ignore[:, None, :], float("-inf"))
        return score.softmax(dim=-1) @ self.word_value(words)               # (B, N_q, C)


class QueryBalance(nn.Module):
    """Confidence per query; returns the confidence-weighted mean response (B, C)."""

    def __init__(self, channels: int):
        super().__init__()
        self.confidence = Mlp(channels, hidden_features=channels, out_features=1, act_layer=nn.ReLU)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        c = self.confidence(queries).sigmoid()                              # (B, N_q, 1)
        return (c * queries).sum(1) / c.sum(1).clamp(min=1e-6)


class VLT(DenseReferringModel):
    """VLT base; Y = (B, channels, H/4, W/4). Approximate (see module doc)."""

    def __init__(self, vocab_size: int, text: Callable[..., TextEncoder], vision: dict, channels: int,
                 neck_channels: int, num_heads: int, encoder_layers: int, decoder_layers: int, num_queries: int,
                 decoder_channels: int, loss: dict | None = None):
        super().__init__(vocab_size, text, channels, loss)
        self.vision = SwinTower(**vision, out_norms=True)
        dims = self.vision.dims
        text_dim = self.text.out_dim
        self.neck = Stride16Neck(dims[1:], neck_channels)
        self.fusion = SpatialDynamicFusion(neck_channels, text_dim, num_heads)
        self.encoder = nn.ModuleList(Block(neck_channels, num_heads) for _ in range(encoder_layers))
        self.query_generation = QueryGeneration(neck_channels, text_dim, num_queries)
        self.decoder_layers = nn.ModuleList(
            CrossAttentionBlock(neck_channels, neck_channels, num_heads, self_attention=True)
            for _ in range(decoder_layers))
        self.query_balance = QueryBalance(neck_channels)
        self.decoder = DenseBaseDecoder(neck_channels, dims[1::-1], decoder_channels, channels)

    def encode(self, batch: dict) -> dict:
        word_mask = batch["attention_mask"]
        words, sentence = self.text(batch["tokens"], word_mask)                # (B, T, C_l), (B, C_l)
        ignore = word_mask == 0
        feats = self.vision(batch["image"])                                    # 4 x (B, D_s, H_s, W_s)
        x = self.neck(feats[1:])                                               # (B, C, H/16, W/16)
        B, C, H, W = x.shape
        pixels = x.flatten(2).transpose(1, 2)                                  # (B, HW, C)
        memory = self.fusion(pixels, words, ignore) + grid_positions(H, W, C).to(pixels)
        for block in self.encoder:
            memory = block(memory)
        queries = self.query_generation(memory, words, ignore)                 # (B, N_q, C)
        for layer in self.decoder_layers:
            queries = layer(queries, memory)
        response = self.query_balance(queries)                                 # (B, C)
        x = tokens_to_map(memory * (1 + response[:, None]), H, W)              # (B, C, H, W)
        y = self.decoder(x, feats[1::-1])                                      # (B, channels, H/4, W/4)
        return {"Y": y, "L": words, "sentence": sentence, "l_mask": word_mask}
