"""Convolutional decoders and necks shared by the dense (LAVT-style) models.

`SimpleDecoding` is LAVT's decoder (also the segment stage of the LTS and VLT bases); `Stride16Neck`
gathers Swin stages 2-4 at stride 16 (LTS, VLT); `DenseBaseDecoder` = stride-16 map + skips -> Y.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def tokens_to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) map, a view in channels-last layout: the convolutions and the
    bilinear resizes after it then run channels-last (several times faster on CPU than NCHW), and, unlike
    ``transpose(1, 2).reshape``, the strides stay channels-last at batch size 1 too."""
    return tokens.unflatten(1, (height, width)).permute(0, 3, 1, 2)


def upsample_as_is(x: torch.Tensor, upsample: nn.Upsample) -> torch.Tensor:
    """``upsample(x)`` in x's own dtype: autocast would resize a bf16 map in fp32 (two casts and twice the
    memory traffic); bilinear resizing is as exact in bf16 as the map it resizes."""
    with torch.autocast(x.device.type, enabled=False):
        return upsample(x)


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
