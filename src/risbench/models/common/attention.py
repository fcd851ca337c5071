"""Multi-head attention, transformer blocks and position tables shared by the papers' own modules.

Hot path: `F.scaled_dot_product_attention` (fused kernels on GPU and CPU). Every attention module here
(and timm's) carries a ``fused_attn`` flag; `explicit_attention(model)` turns it off so the attention
matmuls run as plain ``matmul`` ops that FLOP counters see and that can return attention maps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn


def init_linear(module: nn.Module) -> None:
    """timm's ViT init for ``module.apply``: trunc_normal(0.02) Linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def padding_bias(key_padding_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, M) True = ignore -> additive (B, 1, 1, M) attention bias: 0 or -inf."""
    bias = torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device)
    return bias.masked_fill(key_padding_mask, float("-inf"))[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, else cross-attention to it."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, context_dim: int | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = True
        self.is_cross = context_dim is not None
        if self.is_cross:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(context_dim, 2 * dim, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.last_attention: torch.Tensor | None = None  # (B, heads, N, M) when record_attention
        self.record_attention = False

    def _split(self, x: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        B, N, _ = x.shape
        x = x.view(B, N, parts, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return x.unbind(0)  # each (B, heads, N, head_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B,N,C); context (B,M,Cc) for cross-attention; key_padding_mask (B,M) True = ignore."""
        B, N, C = x.shape
        if self.is_cross:
            (q,) = self._split(self.q(x), 1)
            k, v = self._split(self.kv(context), 2)
        else:
            q, k, v = self._split(self.qkv(x), 3)
        bias = None
        if key_padding_mask is not None:
            bias = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(key_padding_mask, float("-inf"))[:, None, None, :]
        drop = self.attn_drop if self.training else 0.0
        if self.fused_attn and not self.record_attention:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if bias is not None:
                attn = attn + bias
            attn = attn.softmax(dim=-1)
            if self.record_attention:
                self.last_attention = attn.detach()
            attn = F.dropout(attn, drop)
            out = attn @ v
        out = out.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out))


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s maths, batch-first, with separate query, key and value inputs of their own
    widths (Mask2Former-style layers add positions to the query and key but not to the value).

    ``forward(query (B,N,C), key (B,M,kdim), value (B,M,vdim), key_padding_mask (B,M) True = ignore)``;
    ``attn_drop`` drops attention weights while training (M3Dec's layers).
    ``q_proj``/``k_proj``/``v_proj`` are the three parts of torch's ``in_proj_weight``/``in_proj_bias``
    (or its ``q/k/v_proj_weight`` when the widths differ); ``out_proj`` is the same.
    """

    def __init__(self, dim: int, num_heads: int, kdim: int | None = None, vdim: int | None = None,
                 attn_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kdim or dim, dim)
        self.v_proj = nn.Linear(vdim or dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.fused_attn = True

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)   # (B, heads, N, head_dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = query.shape
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        keep = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # (B, 1, 1, M)
        drop = self.attn_drop if self.training else 0.0
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=drop)
        else:
            attn = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
            if keep is not None:
                attn = attn.masked_fill(~keep, float("-inf"))
            out = F.dropout(attn.softmax(dim=-1), drop) @ v
        return self.out_proj(out.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Transformer block: pre-LN ``x + DropPath(MSA(LN(x)))``, ``x + DropPath(MLP(LN(x)))``.

    ``norm_first=False`` gives the post-LN variant ``LN(x + f(x))`` used by some official code.
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int | None = None, qkv_bias: bool = True,
                 drop_path: float = 0.0, norm_first: bool = True, norm_eps: float = 1e-6):
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_features=mlp_dim or 4 * dim, act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm_first:
            x = x + self.drop_path(self.attn(self.norm1(x), key_padding_mask=key_padding_mask))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.drop_path(self.attn(x, key_padding_mask=key_padding_mask)))
        return self.norm2(x + self.drop_path(self.mlp(x)))


class CrossAttentionBlock(nn.Module):
    """Pre-LN ``x + CrossAttn(LN(x), context)``, ``x + MLP(LN(x))`` (optionally self-attention first)."""

    def __init__(self, dim: int, context_dim: int, num_heads: int, mlp_dim: int | None = None,
                 self_attention: bool = False):
        super().__init__()
        self.self_attn = Block(dim, num_heads, mlp_dim=mlp_dim) if self_attention else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, context_dim=context_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=mlp_dim or 4 * dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                context_padding: torch.Tensor | None = None) -> torch.Tensor:
        if self.self_attn is not None:
            x = self.self_attn(x)
        x = x + self.attn(self.norm1(x), context, key_padding_mask=context_padding)
        return x + self.mlp(self.norm2(x))


@contextlib.contextmanager
def explicit_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Run every attention module of ``model`` (ours, timm's, transformers') on explicit matmuls.

    Used for FLOP counting (fused kernels hide their matmuls from counters) and attention maps.
    """
    saved = []
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            saved.append((module, module.fused_attn))
            module.fused_attn = False
    bert_configs = []
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            bert_configs.append((config, config._attn_implementation))
            config._attn_implementation = "eager"
    try:
        yield model
    finally:
        for module, flag in saved:
            module.fused_attn = flag
        for config, impl in bert_configs:
            config._attn_implementation = impl


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """Fixed sine/cosine position table of Vaswani et al.: (length, dim); row 0 = [0, 1, 0, 1, ...]."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-torch.log(torch.tensor(10000.0)) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div[: dim // 2])
    return table


def grid_positions(h: int, w: int, dim: int) -> torch.Tensor:
    """2-D sine/cosine positions (h*w, dim): half the channels encode the row, half the column."""
    rows = sinusoidal_positions(h, dim // 2)[:, None].expand(h, w, dim // 2)
    cols = sinusoidal_positions(w, dim // 2)[None].expand(h, w, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(h * w, dim)


def sine_positions_2d(h: int, w: int, dim: int, temperature: float = 10000.0, device=None) -> torch.Tensor:
    """DETR / Mask2Former's normalised sine positions of an (h, w) map (``PositionEmbeddingSine(dim // 2,
    normalize=True)``): (h*w, dim), the first half encoding the row, the second the column."""
    half = dim // 2
    eps, scale = 1e-6, 2 * torch.pi
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + eps) * scale
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + eps) * scale
    freq = temperature ** (2 * (torch.arange(half, dtype=torch.float32, device=device) // 2) / half)

    def encode(t: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, half): sin on even channels, cos on odd
        angles = t[:, None] / freq
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    rows, cols = encode(y)[:, None].expand(h, w, half), encode(x)[None].expand(h, w, half)
    return torch.cat([rows, cols], dim=-1).reshape(h * w, dim)
