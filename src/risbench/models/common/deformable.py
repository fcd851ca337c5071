"""Multi-scale deformable attention (Zhu et al., Deformable DETR, 2021) in pure PyTorch, for CPU and GPU.

Each query predicts, per head and feature level, P sampling offsets around its reference point and P
attention weights (softmax over the L x P points of a head); the output is the weighted sum of the values
sampled there. The sampling is bilinear with zeros outside the map (``F.grid_sample``, ``padding_mode=
'zeros'``, ``align_corners=False``), which is what the official CUDA op computes and what its PyTorch
fallback (``ms_deform_attn_core_pytorch``) calls. Locations are (x, y) in [0, 1] of each level, the
centre of pixel (i, j) of an (H, W) level being ((j + 0.5) / W, (i + 0.5) / H).

`MSDeformAttn` keeps the official module's parameter names and shapes (``sampling_offsets``,
``attention_weights``, ``value_proj``, ``output_proj``), so Deformable-DETR / Mask2Former style weights load
unchanged.

What FLOP counting (``mode=profile``, `risbench.profiling`) sees: the four projections are ``nn.Linear``;
the bilinear sampling is ``aten.grid_sampler_2d``, counted by a formula that `risbench.profiling` registers
(4 MACs per sampled value and channel); the weighted sum over the L x P points runs as a ``matmul`` on the
explicit path (``fused_attn=False``, what `explicit_attention` selects while counting: 1 MAC per sampled
value and channel) and as one multiply-sum on the default path (the same numbers, less memory traffic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# hand-written: transformers' pure-PyTorch copy takes shapes as a tensor, may be swapped for a downloaded
# kernel, and hides its weighted sum from FLOP counters; torchvision has no multi-scale deformable attention


def multi_scale_deformable_attention(value: torch.Tensor, shapes: Sequence[tuple[int, int]],
                                     locations: torch.Tensor, weights: torch.Tensor,
                                     counted: bool = False) -> torch.Tensor:
    """Sample and combine: value (B, S, M, D) with S = sum of H_l W_l (levels in ``shapes`` order, each
    row-major), locations (B, Q, M, L, P, 2) as (x, y) in [0, 1], weights (B, Q, M, L, P) -> (B, Q, M*D).

    ``counted``: the weighted sum as a ``matmul`` (visible to FLOP counters) instead of a multiply-sum.
    """
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = locations.shape
    value = value.permute(0, 2, 3, 1).reshape(B * M, D, S)
    grids = (2 * locations - 1).permute(0, 2, 3, 4, 1, 5).reshape(B * M, L, P, Q, 2)
    weights = weights.permute(0, 2, 3, 4, 1).reshape(B * M, L, P, Q)
    return sample_and_combine(value, shapes, grids, weights, counted).reshape(B, M * D, Q).transpose(1, 2)


def sample_and_combine(value: torch.Tensor, shapes: Sequence[tuple[int, int]], grids: torch.Tensor,
                       weights: torch.Tensor, counted: bool = False) -> torch.Tensor:
    """The core in the layout that keeps every kernel on long contiguous rows: value (N, D, S), grids
    (N, L, P, Q, 2) in grid_sample's [-1, 1], weights (N, L, P, Q) -> (N, D, Q), N = batch x heads."""
    N, D, S = value.shape
    _, L, P, Q, _ = grids.shape
    if len(shapes) != L or sum(h * w for h, w in shapes) != S:
        raise ValueError(f"deformable attention: {L} levels of shapes {list(shapes)} do not cover {S} values")
    sampled, start = [], 0
    for level, (h, w) in enumerate(shapes):
        level_value = value[:, :, start:start + h * w].view(N, D, h, w)
        sampled.append(F.grid_sample(level_value, grids[:, level], mode="bilinear", padding_mode="zeros",
                                     align_corners=False))                  # (N, D, P, Q)
        start += h * w
    if counted:
        points = torch.cat(sampled, dim=2).permute(0, 3, 1, 2)              # (N, Q, D, L*P)
        return torch.matmul(points, weights.reshape(N, L * P, Q).permute(0, 2, 1)[..., None])[..., 0].transpose(1, 2)
    out = (sampled[0] * weights[:, None, 0]).sum(2)                          # level by level: no concatenation
    for level in range(1, L):
        out = out + (sampled[level] * weights[:, None, level]).sum(2)
    return out                                                               # (N, D, Q)


def reference_points(shapes: Sequence[tuple[int, int]], device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel centres of every level, (S, 2) as (x, y) in [0, 1], levels in ``shapes`` order."""
    points = []
    for h, w in shapes:
        y, x = torch.meshgrid((torch.arange(h, device=device, dtype=dtype) + 0.5) / h,
                              (torch.arange(w, device=device, dtype=dtype) + 0.5) / w, indexing="ij")
        points.append(torch.stack((x.reshape(-1), y.reshape(-1)), dim=-1))
    return torch.cat(points)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention over ``n_levels`` flattened maps (Deformable DETR's module).

    ``forward(query (B,Q,C), reference (B or 1, Q, L, 2) (x, y) in [0, 1], value (B,S,C), shapes)``;
    the offsets are in pixels of each level (divided by its (W, H)), as in the official module, which
    it computes with fewer passes over small tensors (the scale folded into the offsets' projection, the
    softmax and the weighted sum along the queries).
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"deformable attention: d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.fused_attn = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: head h starts sampling along direction 2 pi h / heads, point p at p + 1
        pixels (on the square's border), uniform attention weights, Xavier value/output projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        direction = torch.stack([angles.cos(), angles.sin()], -1)
        direction = direction / direction.abs().max(-1, keepdim=True).values                   # (heads, 2)
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        grid = direction[:, None, None, :] * steps[None, None, :, None]                      # (heads, 1, P, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.expand(-1, self.n_levels, -1, -1).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, value: torch.Tensor,
                shapes: Sequence[tuple[int, int]], padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, Q, _ = query.shape
        M, L, P, D = self.n_heads, self.n_levels, self.n_points, self.d_model // self.n_heads
        if reference.shape[-1] != 2 or reference.shape[-2] != L:
            raise ValueError(f"deformable attention: reference points must be (B, Q, {L}, 2), got "
                             f"{tuple(reference.shape)}")
        v = self.value_proj(value)                                             # autocast's dtype
        if padding_mask is not None:  # (B, S) True = padding
            v = v.masked_fill(padding_mask[..., None], 0.0)
        # where to sample, with what weight, and the sampling itself in at least fp32 (a bf16 location is
        # a quarter pixel off on a 60-wide map); the projections around it follow autocast
        dtype = torch.promote_types(query.dtype, torch.float32)
        with torch.autocast(query.device.type, enabled=False):
            query, S = query.to(dtype), v.shape[1]
            v = v.to(dtype).view(B, S, M, D).permute(0, 2, 3, 1).reshape(B * M, D, S)
            # grid = 2 (reference + offset / (W, H)) - 1, the scale folded into the offsets' projection
            size = torch.tensor([[w, h] for h, w in shapes], dtype=dtype, device=query.device)          # (L, 2)
            scale = (2.0 / size)[None, :, None, :].expand(M, L, P, 2).reshape(-1)
            centre = (2 * reference.to(dtype) - 1)[:, :, None, :, None, :].expand(-1, -1, M, L, P, 2).flatten(2)
            offsets = self.sampling_offsets
            grids = F.linear(query, offsets.weight.to(dtype) * scale[:, None], offsets.bias.to(dtype) * scale)
            grids = (grids + centre).view(B, Q, M, L, P, 2).permute(0, 2, 3, 4, 1, 5).reshape(B * M, L, P, Q, 2)
            # softmax over a head's L x P points, taken with the queries contiguous
            logits = F.linear(query, self.attention_weights.weight.to(dtype), self.attention_weights.bias.to(dtype))
            logits = logits.view(B, Q, M, L * P).permute(0, 2, 3, 1).reshape(B * M, L * P, Q)
            weights = logits.softmax(dim=1).view(B * M, L, P, Q)
            out = sample_and_combine(v, shapes, grids, weights, counted=not self.fused_attn)  # (B*M, D, Q)
        return self.output_proj(out.reshape(B, M * D, Q).transpose(1, 2))
