"""Swin Transformer tower (timm) run stage by stage, loading the official Swin release checkpoints.

Models that fuse language inside the backbone (LAVT) call `SwinTower.embed` and `SwinTower.stage` by hand;
plain backbones call ``forward`` for per-stage feature maps. timm's stage ``s`` is PatchMerging (s > 0)
followed by the blocks, so "after stage s" is between ``layers[s]`` and ``layers[s + 1]``.

The windows follow the official dense-prediction Swin (Swin-Transformer-Semantic-Segmentation, which LAVT
and its successors use), not timm's classification defaults: the grid is padded to a multiple of the
window *before* the cyclic shift (timm rolls, then pads), the shift mask is built on the padded grid, and
a stage whose grid is not larger than the window keeps its window and its shift (timm shrinks the window
and drops the shift there, after which official weights no longer fit). Where the grid is a multiple of
the window the two orders agree, so only those stages compute anything different from timm.

Weights come from the Microsoft release file (e.g. ``swin_base_patch4_window12_384_22k.pth``: ``model``
state dict, downsampling at the end of each stage, ``relative_position_index``/``attn_mask`` buffers);
timm's ``checkpoint_filter_fn`` converts that layout (and resizes relative-position tables when the
window differs). The classifier and the final norm of the release are not used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, checkpoint_filter_fn
from timm.models.swin_transformer import WindowAttention as TimmWindowAttention
from torch import nn

from risbench.models.common.weights import load_into, read_state_dict

SWIN_HINT = ("download the official Swin release checkpoint (Swin-B: swin_base_patch4_window12_384_22k.pth "
             "from the microsoft/Swin-Transformer releases) to that path, or set model.vision.pretrained=false")


class WindowAttention(TimmWindowAttention):
    """timm's window attention, on SDPA by default (timm keeps it on explicit matmuls, an 'experimental'
    switch): the relative-position bias and the shift mask go in as ``attn_mask``. Except in reduced-precision
    training on CPU, where SDPA has no fused kernel that gives the mask its gradient and falls back to math
    upcast to fp32, slower than the explicit matmuls in bf16."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not (self.fused_attn and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and torch.is_grad_enabled() and self.relative_position_bias_table.requires_grad):
            return super().forward(x, mask)
        self.fused_attn = False
        try:
            return super().forward(x, mask)
        finally:
            self.fused_attn = True


class PadThenShiftBlock(SwinTransformerBlock):
    """timm's block in the official order: pad H, W to a multiple of the window, then timm's shifted-window
    attention on the padded grid (its own padding is then a no-op and its stored mask is the padded
    grid's), then crop. Same parameters and buffers as timm's block."""

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, H, W, _ = x.shape
        pad_h, pad_w = (-H) % self.window_size[0], (-W) % self.window_size[1]
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))               # (B, Hp, Wp, C), zeros after norm1
        return super()._attn(x)[:, :H, :W].contiguous()        # roll, windows, unroll on (Hp, Wp)


class SwinTower(nn.Module):
    """Swin patch embedding + stages; ``out_norms`` adds a LayerNorm per stage output (dense backbones)."""

    def __init__(self, img_size: int = 480, embed_dim: int = 128, depths: Sequence[int] = (2, 2, 18, 2),
                 num_heads: Sequence[int] = (4, 8, 16, 32), window_size: int = 12, drop_path_rate: float = 0.3,
                 pretrained: bool = True, checkpoint: str | None = None, out_norms: bool = False):
        super().__init__()
        # always_partition: window and shift as configured at every stage, whatever its grid size
        swin = SwinTransformer(img_size=img_size, embed_dim=embed_dim, depths=tuple(depths),
                               num_heads=tuple(num_heads), window_size=window_size, always_partition=True,
                               drop_path_rate=drop_path_rate, num_classes=0)
        for stage in swin.layers:
            for block in stage.blocks:
                block.__class__ = PadThenShiftBlock  # the same module, official pad-then-shift order
                block.attn.__class__ = WindowAttention
                block.attn.fused_attn = True  # explicit_attention turns it off again
        # keep only what runs: same parameter names as the release checkpoint (patch_embed.*, layers.*)
        self.patch_embed = swin.patch_embed
        self.layers = swin.layers
        self.dims = [embed_dim * 2 ** i for i in range(len(depths))]
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in self.dims) if out_norms else None
        self.pretrained = pretrained
        self.checkpoint = checkpoint

    @property
    def num_stages(self) -> int:
        return len(self.layers)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(image)  # (B, H/4, W/4, C) channels-last

    def stage(self, s: int, x: torch.Tensor) -> torch.Tensor:
        return self.layers[s](x)  # (B, H_s, W_s, D_s)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage feature maps (B, D_s, H_s, W_s), normalised when ``out_norms``."""
        x = self.embed(image)
        outs = []
        for s in range(self.num_stages):
            x = self.stage(s, x)
            out = self.norms[s](x) if self.norms is not None else x
            outs.append(out.permute(0, 3, 1, 2))
        return outs

    def load_pretrained(self) -> None:
        state = read_state_dict(self.checkpoint or "", "Swin checkpoint (model.vision.checkpoint)", SWIN_HINT)
        state = checkpoint_filter_fn(state, self)
        load_into(self, state, "Swin checkpoint", allowed_missing=("norms.",),
                  allowed_unexpected=("norm.", "head."))
