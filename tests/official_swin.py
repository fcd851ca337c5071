"""A Swin block computed the way the official dense-prediction Swin does it, written out from its description
(Swin-Transformer-Semantic-Segmentation, which LAVT's backbone copies), as the reference for the tower.

Order: LayerNorm, zero-pad H and W to a multiple of the window, cyclic shift of the padded grid, window
attention with the relative-position bias and, in shifted blocks, the -100 mask of the padded grid's nine
regions, reverse shift, crop, residual, then LayerNorm + MLP + residual. The window and the shift are used as
configured, whatever the grid size. Only the weights are taken from the block under test.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, Hp, Wp, C) -> (B * nW, ws * ws, C), windows in row-major order."""
    B, Hp, Wp, C = x.shape
    return x.view(B, Hp // ws, ws, Wp // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, C)


def from_windows(windows: torch.Tensor, ws: int, B: int, Hp: int, Wp: int) -> torch.Tensor:
    C = windows.shape[-1]
    return windows.view(B, Hp // ws, Wp // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)


def relative_position_index(ws: int) -> torch.Tensor:
    """(ws², ws²): row offset and column offset of each token pair, as one index into the (2ws-1)² table."""
    rows, cols = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])     # (2, ws²)
    delta = coords[:, :, None] - coords[:, None, :] + ws - 1    # (2, ws², ws²), offsets shifted to >= 0
    return delta[0] * (2 * ws - 1) + delta[1]


def shift_mask(Hp: int, Wp: int, ws: int, shift: int) -> torch.Tensor:
    """(nW, ws², ws²): -100 between tokens of different regions of the padded, shifted grid, else 0."""
    region = torch.zeros(Hp, Wp)
    bands = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    for i, rows in enumerate(bands):
        for j, cols in enumerate(bands):
            region[rows, cols] = 3 * i + j
    labels = to_windows(region[None, :, :, None], ws)[..., 0]  # (nW, ws²)
    return (labels[:, None, :] != labels[:, :, None]).float() * -100.0


def official_block(block, x: torch.Tensor, window: int, shift: int) -> torch.Tensor:
    """The official block on (B, H, W, C) tokens with ``block``'s weights (a timm ``SwinTransformerBlock``)."""
    B, H, W, C = x.shape
    heads = block.attn.num_heads
    Hp, Wp = math.ceil(H / window) * window, math.ceil(W / window) * window
    y = F.pad(block.norm1(x), (0, 0, 0, Wp - W, 0, Hp - H))
    if shift:
        y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
    windows = to_windows(y, window)                             # (B nW, N, C)
    N = window * window
    q, k, v = block.attn.qkv(windows).view(-1, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    attn = (q * (C // heads) ** -0.5) @ k.transpose(-2, -1)     # (B nW, heads, N, N)
    table = block.attn.relative_position_bias_table
    attn = attn + table[relative_position_index(window).flatten()].view(N, N, heads).permute(2, 0, 1)
    if shift:
        mask = shift_mask(Hp, Wp, window, shift)
        attn = (attn.view(B, -1, heads, N, N) + mask[None, :, None]).view(-1, heads, N, N)
    out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(-1, N, C)
    y = from_windows(block.attn.proj(out), window, B, Hp, Wp)
    if shift:
        y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
    x = x + y[:, :H, :W]
    return x + block.mlp(block.norm2(x))
