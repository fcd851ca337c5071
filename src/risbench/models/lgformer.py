"""LGFormer: Linguistic Query-Guided Mask Generation for Referring Image Segmentation (Wei et al., 2023).

A query-based RIS model whose single query is the sentence: a transformer decoder refines it against
multi-scale visual maps into a prototype, an MLP turns the prototype into a 1x1 kernel, and the kernel's
dot product with stride-4 mask features gives the mask. Three cross-modal fusions (spec
``papers/lgformer.md`` §2; details from the authors' code, built on LAVT + Mask2Former)::

    BERT words L (B,T,768) ----------------------------------------------.
    image -> Swin stage s -> V_s --VLBA(V_s, L)--> V_m, L_m               |   (every stage s = 1..4)
             V' = V + gate(V_m) V_m -> next stage;  L' = (L + gate(L_m) L_m) M -> next stage
             LN_s(V_m) -> stage map s;  L_m of stage 4 -> text (B,T,768)
    pixel decoder: stage maps 4,3,2 -> 256 ch, flattened (1/32, 1/16, 1/8), 6 x [deformable attention,
                   FFN, L2VA: tokens attend to the words (+ a learned key embedding), FFN]
                   -> P32, P16, P8;  stage map 1 + up(P8) -> 3x3 conv -> 1x1 -> F (B,256,H/4,W/4)
    prototype:     q0 = Linear(masked mean of text);  layer l: V2LA = q attends to [P32,P16,P8][l mod 3], FFN
    head:          MLP(q_l) -> kernel w (256) + bias b;  logits_l = F . w + b   for l = 0..6
    loss:          sum over the 7 logits of BCE(pos_weight 1.1) at the input size; prediction = logits_6

Ablation knobs (Tables 2-6): ``model.encoder.fusion=vlba|pwam``, ``model.pixel_decoder.l2va``,
``model.pixel_decoder.l2va_text=word|sentence``, ``model.decoder.{query_type, num_queries, num_layers,
v2la}``; the spec's other choices (``model.encoder.out``, ``model.pixel_decoder.mask_features``,
``model.decoder.self_attn``, ``model.head.bias``, ``model.loss.*``) are keys too. Every resize is bilinear
with ``align_corners=False``, as in the authors' code (LAVT uses True).

`convert_lgformer_official` maps the authors' checkpoints (``backbone.*``, ``classifier.*``, BERT inside as
``text_encoder.*``) onto this model.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from risbench.errors import RisbenchError
from risbench.losses import bce_loss, dice_loss
from risbench.models.base import RISModel
from risbench.models.common.attention import MultiheadAttention, sine_positions_2d
from risbench.models.common.deformable import MSDeformAttn, reference_points
from risbench.models.common.fusion import PWAM, LanguageGate, instance_norm_tokens
from risbench.models.common.text import TextEncoder, masked_mean
from risbench.models.common.vision.swin import SwinTower
from risbench.models.common.weights import rename_released_keys


def check_choice(key: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise RisbenchError(f"{key} must be one of {list(allowed)}, got {value!r}")


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear, ``align_corners=False`` (every resize of LGFormer's code); no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


# --- encoder: Swin + VLBA after every stage ---

class BidirectionalAttention(nn.Module):
    """One pixel-word affinity used both ways (Eq. 5-7): pixels attend to words, words attend to pixels.

    ``forward(x (B,HW,C), words (B,T,C_l), word_mask (B,T)) -> (V_r (B,HW,C), L_r (B,T,C_l))``; single head,
    scale C^-0.5, InstanceNorm (over pixels, no affine) on the query, the pixel response and the pixel values.
    The authors' 1x1 ``Conv1d`` layers are ``nn.Linear`` on tokens.

    The words' side is computed without the (HW, C_l) pixel values: a softmax row sums to 1, so
    ``softmax_HW(A^T) IN(x W^T + b) = ((softmax_HW(A^T) x) W^T + b - (mean(x) W^T + b)) / sigma`` with sigma^2
    the diagonal of ``W cov(x) W^T`` (+ eps): the same numbers for (HW + C_l) C^2 instead of HW C C_l
    multiply-adds and no (HW, C_l) tensor (at 480 px stage 1: 0.25 instead of 1.42 GMACs, 11M values never
    normalised; 1.8 GMACs less over the four stages). The bias cancels (zero gradient, as the code's
    InstanceNorm gives it).
    """

    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(text_dim, dim)
        self.value = nn.Linear(text_dim, dim)
        self.vision_out = nn.Linear(dim, dim)          # w1 of Eq. 6
        self.text_value = nn.Linear(dim, text_dim)
        self.text_out = nn.Linear(text_dim, text_dim)  # w2 of Eq. 7
        self.fused_attn = True
        self.record_attention = False  # keep (softmax_T(A), softmax_HW(A^T)) in last_attention (explicit path)
        self.last_attention: tuple[torch.Tensor, torch.Tensor] | None = None

    def pixel_value_scale(self, centred: torch.Tensor) -> torch.Tensor:
        """1 / InstanceNorm's per-channel std over pixels of ``x W^T`` (eps 1e-5), in fp32: from cov(x) where
        that is cheaper (C (HW + C_l) < HW C_l: the early, large stages), else from ``x W^T`` itself."""
        with torch.autocast(centred.device.type, enabled=False):
            centred, weight = centred.float(), self.text_value.weight.float()  # (B, HW, C), (C_l, C)
            (hw, c), text_dim = centred.shape[1:], weight.shape[0]
            if c * (hw + text_dim) < hw * text_dim:
                cov = centred.transpose(1, 2) @ centred / hw                    # (B, C, C)
                var = ((weight @ cov) * weight).sum(-1)                         # diag(W cov W^T): (B, C_l)
            else:
                var = F.linear(centred, weight).pow(2).mean(dim=1)               # (B, C_l)
            return torch.rsqrt(var + 1e-5)[:, None, :]

    def forward(self, x: torch.Tensor, words: torch.Tensor,
                word_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = x.dtype
        m = word_mask[:, :, None].to(dtype)                                     # (B, T, 1)
        q = instance_norm_tokens(self.query(x)).to(dtype)                      # (B, HW, C)
        k, v = self.key(words) * m, self.value(words) * m                      # (B, T, C), pads zeroed
        mean = x.mean(dim=1, keepdim=True)                                     # (B, 1, C)
        bias = (1e4 * word_mask.to(dtype) - 1e4)[:, None, :]                   # (B, 1, T)
        if self.fused_attn and not self.record_attention:
            to_words = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None],
                                                      attn_mask=bias[:, None])[:, 0]
            # softmax over pixels: a pad's row is uniform (its key is 0) and is zeroed below
            to_pixels = F.scaled_dot_product_attention(k[:, None], q[:, None], x[:, None])[:, 0]
        else:
            affinity = (q @ k.transpose(1, 2)) * q.shape[-1] ** -0.5 + bias    # A (B, HW, T)
            over_words, over_pixels = affinity.softmax(dim=-1), affinity.transpose(1, 2).softmax(dim=-1)
            if self.record_attention:
                self.last_attention = (over_words.detach(), over_pixels.detach())
            to_words, to_pixels = over_words @ v, over_pixels @ x
        vision = instance_norm_tokens(self.vision_out(to_words)).to(dtype)     # V_r
        pixels = self.text_value(to_pixels) - self.text_value(mean)            # (B, T, C_l), centred
        pixels = pixels * self.pixel_value_scale(x - mean).to(pixels.dtype)
        text = self.text_out(pixels * m)                                       # L_r
        return vision, text


class VLBA(nn.Module):
    """Vision-language bidirectional attention (Eq. 5-9): multi-modal V_m (B,HW,C) and L_m (B,T,C_l)."""

    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        self.vis_project = nn.Linear(dim, dim)
        self.lang_project = nn.Linear(text_dim, text_dim)
        self.attention = BidirectionalAttention(dim, text_dim)
        self.fuse_vision = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU())
        self.fuse_text = nn.Sequential(nn.Linear(2 * text_dim, text_dim), nn.GELU(),
                                       nn.Linear(text_dim, text_dim), nn.GELU())

    def forward(self, x: torch.Tensor, words: torch.Tensor,
                word_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = word_mask[:, :, None].to(x.dtype)
        vision_r, text_r = self.attention(x, words, word_mask)
        vision = self.fuse_vision(torch.cat([F.gelu(self.vis_project(x)), vision_r], dim=-1))
        text = torch.cat([F.gelu(self.lang_project(words)) * m, text_r * m], dim=-1)
        return vision, self.fuse_text(text) * m


class VisionLanguageEncoder(nn.Module):
    """Swin stages with a fusion (VLBA, or LAVT's PWAM) and gates after each.

    Returns the per-stage maps LN_s(V_m) (B, D_s, H_s, W_s) and the text for the decoder: L_m of the last
    stage (VLBA), the BERT words (PWAM, which never updates them). ``out=updated`` hands on the gated V'
    and L' instead (spec §6.4). The last stage's gates are built only then: otherwise their outputs feed
    nothing (the authors' code computes and drops them).
    """

    def __init__(self, vision: dict, text_dim: int, fusion: str = "vlba", out: str = "fused",
                 gate_init: str = "lavt"):
        super().__init__()
        check_choice("model.encoder.fusion", fusion, ("vlba", "pwam"))
        check_choice("model.encoder.out", out, ("fused", "updated"))
        self.swin = SwinTower(**vision)
        self.dims = self.swin.dims
        if len(self.dims) != 4:
            raise RisbenchError(f"LGFormer needs 4 Swin stages (strides 4-32), got model.vision.depths with "
                                f"{len(self.dims)}")
        self.fusion, self.out = fusion, out
        self.fusions = nn.ModuleList((VLBA if fusion == "vlba" else PWAM)(d, text_dim) for d in self.dims)
        gated = len(self.dims) if out == "updated" else len(self.dims) - 1
        self.vision_gates = nn.ModuleList(LanguageGate(d, gate_init) for d in self.dims[:gated])
        self.text_gates = nn.ModuleList(LanguageGate(text_dim, gate_init) for _ in range(gated)) \
            if fusion == "vlba" else nn.ModuleList()
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in self.dims)

    def forward(self, image: torch.Tensor, words: torch.Tensor,
                word_mask: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        m = word_mask[:, :, None].to(words.dtype)
        x, text = self.swin.embed(image), words                                # (B, H/4, W/4, D_1)
        maps = []
        for s, fusion in enumerate(self.fusions):
            x = self.swin.stage(s, x)                                          # (B, H_s, W_s, D_s)
            B, H, W, D = x.shape
            tokens = x.reshape(B, H * W, D)
            if self.fusion == "vlba":
                vision_m, text_m = fusion(tokens, text, word_mask)            # V_m, L_m
            else:
                vision_m, text_m = fusion(tokens, text, word_mask), None
            if s < len(self.vision_gates):
                tokens = tokens + self.vision_gates[s](vision_m) * vision_m    # V'
                if text_m is not None:
                    text = (text + self.text_gates[s](text_m) * text_m) * m    # L'
            # contiguous (B, D, H, W): on a channels-last view oneDNN picks a less precise 3x3 convolution
            maps.append(self.norms[s](vision_m if self.out == "fused" else tokens).transpose(1, 2)
                        .reshape(B, D, H, W).contiguous())
            x = tokens.view(B, H, W, D)
        if self.fusion == "vlba" and self.out == "fused":
            text = text_m
        return maps, text


# --- language-guided pixel decoder (Mask2Former's MSDeformAttnPixelDecoder + L2VA) ---

class InferenceInPlaceReLU(nn.ReLU):
    """ReLU in place when no gradient is recorded: inference skips a fresh (tokens x ffn_dim) buffer (5% of
    the 480 px forward); in training the in-place form measured 5-12% slower, so it stays out of place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x, inplace=not torch.is_grad_enabled())


class CrossAttentionLayer(nn.Module):
    """Post-norm ``LN(x + CrossAttn(x + pos_q, ctx + pos_k, ctx))``, optional self-attention, ``LN(x + FFN(x))``.

    The authors' decoder layer (L2VA in the pixel decoder, V2LA in the prototype generator); ``attend=False``
    leaves FFN + LN (Table 4 without V2LA); ``self_attention`` adds Mask2Former's after the cross-attention.
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int, ffn_dim: int, attend: bool = True,
                 self_attention: bool = False):
        super().__init__()
        self.cross_attn = MultiheadAttention(dim, num_heads, kdim=context_dim, vdim=context_dim) if attend else None
        self.norm_ca = nn.LayerNorm(dim) if attend else None
        self.self_attn = MultiheadAttention(dim, num_heads) if self_attention else None
        self.norm_sa = nn.LayerNorm(dim) if self_attention else None
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), InferenceInPlaceReLU(), nn.Linear(ffn_dim, dim))
        self.norm_ffn = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, query_pos: torch.Tensor | None = None,
                key_pos: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        query = x if query_pos is None else x + query_pos
        if self.cross_attn is not None:
            key = context if key_pos is None else context + key_pos
            x = self.norm_ca(x + self.cross_attn(query, key, context, key_padding_mask))
            query = x if query_pos is None else x + query_pos
        if self.self_attn is not None:
            x = self.norm_sa(x + self.self_attn(query, query, x))
        return self.norm_ffn(x + self.ffn(x))


class PixelDecoderLayer(nn.Module):
    """Deformable attention -> LN -> FFN -> LN, then L2VA (tokens attend to the text) when ``l2va``."""

    def __init__(self, dim: int, text_dim: int, num_heads: int, num_levels: int, num_points: int, ffn_dim: int,
                 l2va: bool, l2va_ffn_dim: int):
        super().__init__()
        self.self_attn = MSDeformAttn(dim, num_levels, num_heads, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.activation = InferenceInPlaceReLU()
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.text_attn = CrossAttentionLayer(dim, text_dim, num_heads, l2va_ffn_dim) if l2va else None

    def forward(self, x: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor, shapes: list[tuple[int, int]],
                text: torch.Tensor, text_pos: torch.Tensor | None, text_padding: torch.Tensor | None) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x + pos, reference, x, shapes))
        x = self.norm2(x + self.linear2(self.activation(self.linear1(x))))
        if self.text_attn is not None:
            x = self.text_attn(x, text, query_pos=pos, key_pos=text_pos, key_padding_mask=text_padding)
        return x


class PixelDecoder(nn.Module):
    """Stage maps -> multi-scale maps [P32, P16, P8] (B, dim, h, w) and mask features F (B, mask_dim, H/4, W/4).

    ``l2va_text``: ``word`` = keys/values are the words plus a learned key embedding of ``text_length``
    positions (so the padded text length must be exactly that: 20 in the authors' code); ``sentence`` =
    the masked-mean token alone, no key embedding (Table 6). ``mask_features``: ``fpn`` = the code's
    stride-4 lateral of stage 1 + up(P8) -> 3x3 conv; ``upsample`` = up(P8) alone (the paper's wording).
    ``fp32``: the whole decoder in fp32 under mixed precision (the code: its CUDA deformable op takes fp32
    only); ``false`` lets autocast run its matmuls in bf16 (the deformable sampling stays fp32 either way).
    """

    NUM_LEVELS = 3  # strides 32, 16, 8, coarsest first

    def __init__(self, in_dims: Sequence[int], text_dim: int, dim: int = 256, mask_dim: int = 256,
                 num_layers: int = 6, num_heads: int = 8, num_points: int = 4, ffn_dim: int = 1024,
                 l2va: bool = True, l2va_text: str = "word", l2va_ffn_dim: int = 2048, text_length: int = 20,
                 mask_features: str = "fpn", norm_groups: int = 32, fp32: bool = True):
        super().__init__()
        self.fp32 = fp32
        self.grad_checkpointing = False  # recompute each layer in the backward (model.grad_checkpointing)
        check_choice("model.pixel_decoder.l2va_text", l2va_text, ("word", "sentence"))
        check_choice("model.pixel_decoder.mask_features", mask_features, ("fpn", "upsample"))
        if dim % norm_groups:
            raise RisbenchError(f"model.pixel_decoder.dim={dim} is not divisible by norm_groups={norm_groups} "
                                "(GroupNorm)")
        self.l2va_text = l2va_text if l2va else None
        self.input_proj = nn.ModuleList(nn.Sequential(nn.Conv2d(d, dim, 1), nn.GroupNorm(norm_groups, dim))
                                        for d in in_dims[:0:-1])
        self.level_embed = nn.Parameter(torch.empty(self.NUM_LEVELS, dim))
        self.layers = nn.ModuleList(PixelDecoderLayer(dim, text_dim, num_heads, self.NUM_LEVELS, num_points,
                                                      ffn_dim, l2va, l2va_ffn_dim) for _ in range(num_layers))
        self.key_embed = nn.Embedding(text_length, text_dim) if self.l2va_text == "word" else None
        if mask_features == "fpn":
            self.lateral = nn.Sequential(nn.Conv2d(in_dims[0], dim, 1, bias=False), nn.GroupNorm(norm_groups, dim))
            self.output = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False),
                                        nn.GroupNorm(norm_groups, dim), nn.ReLU())
        else:
            self.lateral = self.output = None
        self.mask_features = nn.Conv2d(dim, mask_dim, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The code's init: Xavier for every matrix of the transformer (its deformable attention then its
        own), a normal level embedding, Xavier input projections, Kaiming (a=1) for the FPN convolutions."""
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for layer in self.layers:
            layer.self_attn.reset_parameters()
        if self.key_embed is not None:
            nn.init.xavier_uniform_(self.key_embed.weight)
        nn.init.normal_(self.level_embed)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
        for conv in [self.mask_features] + ([self.lateral[0], self.output[0]] if self.lateral is not None else []):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def text_keys(self, text: torch.Tensor, word_mask: torch.Tensor):
        """(keys/values, key positions, key padding) of L2VA."""
        if self.l2va_text == "sentence":
            return masked_mean(text, word_mask)[:, None], None, None
        if text.shape[1] != self.key_embed.num_embeddings:
            raise RisbenchError(
                f"LGFormer's L2VA has a learned key embedding of model.pixel_decoder.text_length="
                f"{self.key_embed.num_embeddings} positions, but the text is padded to {text.shape[1]} tokens.\n"
                "  how to fix: set tokenizer.max_length and model.pixel_decoder.text_length to the same value "
                "(20 in the authors' code and checkpoints)")
        return text, self.key_embed.weight, word_mask == 0  # (T, C_l) positions broadcast over the batch

    def forward(self, feats: Sequence[torch.Tensor], text: torch.Tensor,
                word_mask: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.fp32 and torch.is_autocast_enabled(text.device.type):
            with torch.autocast(text.device.type, enabled=False):
                return self.forward([f.float() for f in feats], text.float(), word_mask)
        levels = [proj(f) for proj, f in zip(self.input_proj, feats[:0:-1])]  # stages 4, 3, 2 -> (B, dim, h, w)
        B, dim = levels[0].shape[:2]
        shapes = [tuple(level.shape[-2:]) for level in levels]
        x = torch.cat([level.flatten(2).transpose(1, 2) for level in levels], dim=1)   # (B, S, dim)
        pos = torch.cat([sine_positions_2d(h, w, dim, device=x.device) + self.level_embed[i]
                         for i, (h, w) in enumerate(shapes)])[None].to(x.dtype)    # (1, S, dim)
        reference = reference_points(shapes, device=x.device, dtype=x.dtype)       # (S, 2)
        reference = reference[None, :, None].expand(1, -1, self.NUM_LEVELS, -1)    # same point on every level
        keys, key_pos, key_padding = self.text_keys(text, word_mask) if self.l2va_text else (None, None, None)
        for layer in self.layers:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, pos, reference, shapes, keys, key_pos, key_padding, use_reentrant=False)
            else:
                x = layer(x, pos, reference, shapes, keys, key_pos, key_padding)
        maps = [t.transpose(1, 2).reshape(B, dim, h, w)
                for t, (h, w) in zip(x.split([h * w for h, w in shapes], dim=1), shapes)]  # P32, P16, P8
        y = resize(maps[-1], feats[0].shape[-2:])
        if self.lateral is not None:
            y = self.output(self.lateral(feats[0]) + y)
        return self.mask_features(y), maps


# --- prototype generator (V2LA) and head ---

class PrototypeGenerator(nn.Module):
    """Queries (B, K, C_l) refined against the maps in turn: layer l attends to maps[l mod 3] (P32, P16, P8).

    ``query_type``: ``linguistic`` = one query, Linear(masked mean of the text) (the paper); ``learnable`` =
    K learned queries (Table 2). Returns the queries before the first layer and after each: num_layers + 1.
    Memory = map + level embedding; its keys also get the sine positions; the queries a learned position.
    """

    def __init__(self, text_dim: int, memory_dim: int, num_layers: int = 6, num_heads: int = 8,
                 ffn_dim: int = 2048, query_type: str = "linguistic", num_queries: int = 1, v2la: bool = True,
                 self_attn: bool = False):
        super().__init__()
        check_choice("model.decoder.query_type", query_type, ("linguistic", "learnable"))
        if query_type == "linguistic" and num_queries != 1:
            raise RisbenchError(f"model.decoder.query_type=linguistic has one query (the sentence), got "
                                f"model.decoder.num_queries={num_queries}; use query_type=learnable for K queries")
        self.query_type = query_type
        self.txt_proj = nn.Linear(text_dim, text_dim) if query_type == "linguistic" else None
        self.query_feat = nn.Embedding(num_queries, text_dim) if query_type == "learnable" else None
        self.query_pos = nn.Embedding(num_queries, text_dim)
        self.level_embed = nn.Embedding(PixelDecoder.NUM_LEVELS, memory_dim)
        self.layers = nn.ModuleList(CrossAttentionLayer(text_dim, memory_dim, num_heads, ffn_dim, attend=v2la,
                                                        self_attention=self_attn) for _ in range(num_layers))
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def initial_query(self, text: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        if self.txt_proj is not None:
            return self.txt_proj(masked_mean(text, word_mask))[:, None]        # (B, 1, C_l)
        return self.query_feat.weight.to(text.dtype).repeat(text.shape[0], 1, 1)  # (B, K, C_l)

    def forward(self, text: torch.Tensor, word_mask: torch.Tensor, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        q = self.initial_query(text, word_mask)
        memory = [m.flatten(2).transpose(1, 2) + self.level_embed.weight[i].to(m.dtype) for i, m in enumerate(maps)]
        key_pos = [sine_positions_2d(*m.shape[-2:], m.shape[1], device=m.device)[None].to(m.dtype) for m in maps]
        query_pos = self.query_pos.weight.to(q.dtype)                          # (K, C_l), broadcast
        queries = [q]
        for l, layer in enumerate(self.layers):
            i = l % len(maps)
            q = layer(q, memory[i], query_pos=query_pos, key_pos=key_pos[i])
            queries.append(q)
        return torch.stack(queries, dim=1)                                     # (B, layers + 1, K, C_l)


class DynamicKernelHead(nn.Module):
    """MLP(query) -> 1x1 kernel w (mask_dim) and bias b; logits = F . w + b for every query of every layer.

    K > 1 queries (learnable rows of Table 2) are merged per pixel by a 3-layer 1x1-conv MLP into one map.
    """

    def __init__(self, text_dim: int, mask_dim: int, num_queries: int = 1, bias: bool = True,
                 merge_dim: int = 256):
        super().__init__()
        self.mask_dim = mask_dim
        self.mlp = nn.Sequential(nn.Linear(text_dim, text_dim), nn.ReLU(), nn.Linear(text_dim, text_dim), nn.ReLU(),
                                 nn.Linear(text_dim, mask_dim + int(bias)))
        self.merge = nn.Sequential(nn.Conv2d(num_queries, merge_dim, 1), nn.ReLU(), nn.Conv2d(merge_dim, merge_dim, 1),
                                   nn.ReLU(), nn.Conv2d(merge_dim, 1, 1)) if num_queries > 1 else None

    def forward(self, queries: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """queries (B, N, K, C_l), features (B, mask_dim, h, w) -> logits (B, N, h, w)."""
        B, N, K, _ = queries.shape
        h, w = features.shape[-2:]
        kernel = self.mlp(queries.flatten(1, 2))                               # (B, N*K, mask_dim [+ 1])
        logits = torch.bmm(kernel[..., :self.mask_dim], features.flatten(2))   # (B, N*K, h*w)
        if kernel.shape[-1] > self.mask_dim:
            logits = logits + kernel[..., self.mask_dim:]
        logits = logits.view(B, N, K, h, w)
        if self.merge is not None:
            return self.merge(logits.flatten(0, 1)).view(B, N, h, w)
        return logits[:, :, 0]


class LGFormer(RISModel):
    """LGFormer; ``forward`` returns ``logits`` (B, num_layers + 1, H/4, W/4), one map per decoder output
    (the last is the prediction), plus the intermediates the official test vectors compare."""

    def __init__(self, vocab_size: int, text: Callable[..., TextEncoder], vision: dict, encoder: dict,
                 pixel_decoder: dict, decoder: dict, head: dict, loss: dict):
        super().__init__()
        self.text = text(vocab_size=vocab_size)
        text_dim = self.text.out_dim
        self.encoder = VisionLanguageEncoder(vision, text_dim, **encoder)
        self.pixel_decoder = PixelDecoder(self.encoder.dims, text_dim, **pixel_decoder)
        dim = self.pixel_decoder.level_embed.shape[1]
        mask_dim = self.pixel_decoder.mask_features.out_channels
        self.decoder = PrototypeGenerator(text_dim, dim, **decoder)
        self.head = DynamicKernelHead(text_dim, mask_dim, self.decoder.query_pos.num_embeddings, **head)
        defaults = {"pos_weight": 1.1, "deep_supervision": True, "resolution": "input", "dice_weight": 0.0}
        unknown = sorted(set(loss) - set(defaults))
        if unknown:
            raise RisbenchError(f"model.loss has unknown keys {unknown}; known: {sorted(defaults)}")
        self.loss_cfg = {**defaults, **loss}
        check_choice("model.loss.resolution", self.loss_cfg["resolution"], ("input", "stride4"))

    def forward(self, batch: dict) -> dict:
        image, tokens, word_mask = batch["image"], batch["tokens"], batch["attention_mask"]
        words, _ = self.text(tokens, word_mask)                                # (B, T, C_l)
        stages, text = self.encoder(image, words, word_mask)                   # 4 x (B, D_s, H_s, W_s), (B, T, C_l)
        features, maps = self.pixel_decoder(stages, text, word_mask)           # (B, mask_dim, H/4, W/4), 3 maps
        queries = self.decoder(text, word_mask, maps)                          # (B, N + 1, K, C_l)
        logits = self.head(queries, features)                                  # (B, N + 1, H/4, W/4)
        return {"logits": logits, "size": tuple(image.shape[-2:]), "stages": stages, "text": text,
                "mask_features": features}

    def loss(self, outputs: dict, batch: dict) -> dict:
        """BCE (pos_weight) of every decoder output, summed (``deep_supervision``), at the input size with the
        logits upsampled, or at stride 4 with the ground truth nearest-downsampled (Eq. 13); plus
        ``dice_weight`` x soft Dice per map (0 in the paper)."""
        cfg = self.loss_cfg
        logits = outputs["logits"].float()
        logits = logits if cfg["deep_supervision"] else logits[:, -1:]
        target = batch["mask"].float()
        if cfg["resolution"] == "input":
            logits = resize(logits, target.shape[-2:])
        else:
            target = F.interpolate(target, size=logits.shape[-2:], mode="nearest")
        # each map's mean BCE, summed over the maps = the mean over all of them times their number
        maps = logits.shape[1]
        bce = bce_loss(logits, target.expand_as(logits), cfg["pos_weight"]) * maps
        if not cfg["dice_weight"]:
            return {"loss": bce}
        # a soft Dice term per map: a from-scratch recipe knob (scale=tiny), not the paper's loss
        dice = dice_loss(logits.flatten(0, 1)[:, None], target.expand_as(logits).flatten(0, 1)[:, None]) * maps
        return {"loss": bce + cfg["dice_weight"] * dice, "bce": bce.detach(), "dice": dice.detach()}

    def mask_logits(self, outputs: dict) -> torch.Tensor:
        return resize(outputs["logits"][:, -1:].float(), outputs["size"])      # (B, 1, H, W)


# --- the authors' checkpoints (github.com/ZhichaoWei/LGFormer; train.py saves {'model', 'args', ...}) ---

# the authors' args.swin_type -> (embed_dim, depths, num_heads), as their lib/lgformer.py builds the backbone
OFFICIAL_SWIN_TYPES = {
    "tiny": (96, [2, 2, 6, 2], [3, 6, 12, 24]),
    "small": (96, [2, 2, 18, 2], [3, 6, 12, 24]),
    "base": (128, [2, 2, 18, 2], [4, 8, 16, 32]),
    "large": (192, [2, 2, 18, 2], [6, 12, 24, 48]),
}


def official_architecture(args: argparse.Namespace) -> dict:
    """The backbone the authors' code builds from a checkpoint's saved ``args`` (``vision`` = SwinTower
    dims and window) and its ``img_size``; the decoder widths and BERT-base are fixed in their code."""
    swin_type = getattr(args, "swin_type", "base")
    if swin_type not in OFFICIAL_SWIN_TYPES:
        raise RisbenchError(f"the checkpoint's args.swin_type is {swin_type!r}; LGFormer's code knows "
                            f"{list(OFFICIAL_SWIN_TYPES)}")
    if any(int(h) != 1 for h in str(getattr(args, "mha", "") or "1").split("-")):
        raise RisbenchError(f"the checkpoint was trained with multi-head VLBA (args.mha={args.mha!r}); this "
                            "LGFormer has the code's default single-head VLBA")
    embed_dim, depths, num_heads = OFFICIAL_SWIN_TYPES[swin_type]
    # window 12 when --window12 or the Swin file it started from was a window-12 release (the name is only matched)
    window12 = bool(getattr(args, "window12", False)) or "window12" in str(getattr(args, "pretrained_swin_weights", ""))
    return {"vision": {"embed_dim": embed_dim, "depths": depths, "num_heads": num_heads,
                       "window_size": 12 if window12 else 7}, "img_size": int(getattr(args, "img_size", 480))}


SEQ = {"0": "0", "3": "2"}      # the code's nn.Sequential indices, its Dropout layers removed
GATE = {"0": "fc1", "2": "fc2"}  # res_gate = Linear-ReLU-Linear-Tanh
_VLBA = r"backbone\.layers\.(\d+)\.fusion\."
_PIXEL = r"classifier\.pix_dec\.transformer\.encoder\."
# official key (regex) -> this LGFormer's key (a template or a function of the match)
OFFICIAL_RENAMES: list[tuple[str, str | Callable[[re.Match], str]]] = [
    (r"text_encoder\.(.*)", r"text.bert.\1"),
    (r"backbone\.patch_embed\.(.*)", r"encoder.swin.patch_embed.\1"),
    (r"backbone\.layers\.(\d+)\.blocks\.(.*)", r"encoder.swin.layers.\1.blocks.\2"),
    # the release layout downsamples at the end of stage i, timm at the start of stage i + 1
    (r"backbone\.layers\.(\d+)\.downsample\.(.*)", lambda m: f"encoder.swin.layers.{int(m[1]) + 1}.downsample.{m[2]}"),
    (_VLBA + r"vis_project\.0\.(.*)", r"encoder.fusions.\1.vis_project.\2"),
    (_VLBA + r"lang_project\.0\.(.*)", r"encoder.fusions.\1.lang_project.\2"),
    (_VLBA + r"image_lang_att\.query\.0\.(.*)", r"encoder.fusions.\1.attention.query.\2"),
    (_VLBA + r"image_lang_att\.key\.(.*)", r"encoder.fusions.\1.attention.key.\2"),
    (_VLBA + r"image_lang_att\.value\.(.*)", r"encoder.fusions.\1.attention.value.\2"),
    (_VLBA + r"image_lang_att\.W\.0\.(.*)", r"encoder.fusions.\1.attention.vision_out.\2"),
    (_VLBA + r"image_lang_att\.sym_value\.0\.(.*)", r"encoder.fusions.\1.attention.text_value.\2"),
    (_VLBA + r"image_lang_att\.sym_W\.(.*)", r"encoder.fusions.\1.attention.text_out.\2"),
    (_VLBA + r"project_mm\.([03])\.(.*)", lambda m: f"encoder.fusions.{m[1]}.fuse_vision.{SEQ[m[2]]}.{m[3]}"),
    (_VLBA + r"sym_project_mm\.([03])\.(.*)", lambda m: f"encoder.fusions.{m[1]}.fuse_text.{SEQ[m[2]]}.{m[3]}"),
    (r"backbone\.layers\.(\d+)\.res_gate\.([02])\.weight",
     lambda m: f"encoder.vision_gates.{m[1]}.{GATE[m[2]]}.weight"),
    (r"backbone\.layers\.(\d+)\.sym_res_gate\.([02])\.weight",
     lambda m: f"encoder.text_gates.{m[1]}.{GATE[m[2]]}.weight"),
    (r"backbone\.norm(\d+)\.(.*)", r"encoder.norms.\1.\2"),
    (r"classifier\.pix_dec\.input_proj\.(.*)", r"pixel_decoder.input_proj.\1"),
    (r"classifier\.pix_dec\.transformer\.level_embed", r"pixel_decoder.level_embed"),
    (_PIXEL + r"layers\.(\d+)\.(.*)", r"pixel_decoder.layers.\1.\2"),
    (_PIXEL + r"cross_attn_layers\.(\d+)\.ffn\.([03])\.(.*)",
     lambda m: f"pixel_decoder.layers.{m[1]}.text_attn.ffn.{SEQ[m[2]]}.{m[3]}"),
    (_PIXEL + r"cross_attn_layers\.(\d+)\.(.*)", r"pixel_decoder.layers.\1.text_attn.\2"),
    (_PIXEL + r"key_embed\.weight", r"pixel_decoder.key_embed.weight"),
    (r"classifier\.pix_dec\.mask_features\.(.*)", r"pixel_decoder.mask_features.\1"),
    (r"classifier\.pix_dec\.adapter_1\.(.*)", r"pixel_decoder.lateral.\1"),
    (r"classifier\.pix_dec\.layer_1\.(.*)", r"pixel_decoder.output.\1"),
    (r"classifier\.txt_proj\.(.*)", r"decoder.txt_proj.\1"),
    (r"classifier\.dynamic_conv_gen_body\.layers\.(\d+)\.ffn\.([03])\.(.*)",
     lambda m: f"decoder.layers.{m[1]}.ffn.{SEQ[m[2]]}.{m[3]}"),
    (r"classifier\.dynamic_conv_gen_body\.layers\.(.*)", r"decoder.layers.\1"),
    (r"classifier\.dynamic_conv_gen_body\.query_embed\.weight", r"decoder.query_pos.weight"),
    (r"classifier\.dynamic_conv_gen_body\.level_embed\.weight", r"decoder.level_embed.weight"),
    (r"classifier\.dynamic_conv_gen_head\.([024])\.(.*)", r"head.mlp.\1.\2"),
]
# official keys with no counterpart here, and why
OFFICIAL_DROPPED = [
    (r"backbone\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index",
     "relative_position_index: a buffer that timm rebuilds from the window size"),
    (r"text_encoder\.pooler\..*", "BERT's pooler: the code sets it to None (this BERT has none)"),
    (r"text_encoder\.embeddings\.position_ids", "BERT's position_ids: a buffer that transformers rebuilds"),
]
LAST_GATES_REASON = ("the last stage's res_gate and sym_res_gate: the code computes and discards their output "
                     "(it hands on V_m and L_m, and no stage follows)")
_ATTENTION = re.compile(r"(.*\.cross_attn)\.(in_proj_weight|in_proj_bias|[qkv]_proj_weight|out_proj\.weight|"
                        r"out_proj\.bias)")


def _split_attention(prefix: str, entries: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch's ``nn.MultiheadAttention`` parameters -> `MultiheadAttention`'s q/k/v/out projections."""
    out = {f"{prefix}.out_proj.{k}": entries[f"out_proj.{k}"] for k in ("weight", "bias")}
    if "in_proj_weight" in entries:  # query and key/value widths equal: one packed matrix
        weights = entries["in_proj_weight"].chunk(3)
    else:
        weights = [entries[f"{n}_proj_weight"] for n in "qkv"]
    for name, weight, bias in zip("qkv", weights, entries["in_proj_bias"].chunk(3)):
        out[f"{prefix}.{name}_proj.weight"], out[f"{prefix}.{name}_proj.bias"] = weight, bias
    return out


def convert_lgformer_official(checkpoint: dict, keep_last_gates: bool = False
                              ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An authors' checkpoint (``{'model', ...}``, BERT inside as ``text_encoder.*``; or its ``model`` dict)
    -> (an `LGFormer` state dict, {dropped official key: why}).

    Every key is renamed, or dropped for a stated reason (``OFFICIAL_DROPPED``, the last stage's gates unless
    ``keep_last_gates`` for ``model.encoder.out=updated``); any other key is an error, so a strict load
    accounts for every weight. VLBA's ``Conv1d(k=1)`` weights (D, C, 1) become Linear weights (D, C);
    ``nn.MultiheadAttention``'s packed or separate input projections become q/k/v Linear layers.
    """
    official = checkpoint["model"] if isinstance(checkpoint.get("model"), dict) else checkpoint
    last_stage = max((int(m[1]) for key in official if (m := re.match(r"backbone\.layers\.(\d+)\.", key))),
                     default=-1)
    dropped_rules = list(OFFICIAL_DROPPED)
    if not keep_last_gates:
        dropped_rules.append((rf"backbone\.layers\.{last_stage}\.(sym_)?res_gate\..*", LAST_GATES_REASON))
    renamed, dropped, unknown = rename_released_keys(official, OFFICIAL_RENAMES, dropped_rules)
    state, attention = {}, {}
    for key, value in renamed.items():
        if (attn := _ATTENTION.fullmatch(key)) is not None:
            attention.setdefault(attn[1], {})[attn[2]] = value
        elif key.startswith("encoder.fusions.") and value.ndim == 3:
            state[key] = value.squeeze(-1)  # Conv1d(k=1) weight -> Linear weight
        else:
            state[key] = value
    if unknown:
        raise RisbenchError(f"{len(unknown)} keys of the checkpoint are not LGFormer's: {unknown[:5]}.\n"
                            "  how to fix: pass a checkpoint of the authors' LGFormer code (train.py's .pth)")
    for prefix, entries in attention.items():
        state.update(_split_attention(prefix, entries))
    return state, dropped
