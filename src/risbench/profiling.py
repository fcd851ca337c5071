"""Parameter and MAC counting (``mode=profile``, FLOP tables, fidelity tests).

MACs = multiply-adds counted once = ``torch.utils.flop_counter`` FLOPs / 2 (the convention of fvcore
and of most papers' "FLOPs"). Counted inside `explicit_attention`, so attention matmuls are included.
``grid_sample`` (deformable attention's sampling) has no formula in torch: one is registered here, the taps
of its interpolation per output value and channel (bilinear 4 MACs, bicubic 16, nearest 0); see `MAC_NOTES`.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

from risbench.models.common.attention import explicit_attention

MAC_NOTES = ("MACs = FLOPs / 2 of torch's FlopCounterMode with explicit attention (matmuls, convolutions, "
             "linears); grid_sample = its interpolation taps per output value and channel (bilinear: 4); "
             "elementwise ops, norms and softmax are not counted")
GRID_SAMPLE_TAPS = {0: 4, 1: 0, 2: 16}  # aten interpolation_mode: bilinear, nearest, bicubic


def _grid_sample_flop(input_shape, grid_shape, interpolation_mode, *args, out_shape=None, **kwargs) -> int:
    """(N, C, H_out, W_out) outputs, each a weighted sum of its interpolation taps: 2 FLOPs per tap."""
    n, c, h, w = out_shape
    return 2 * GRID_SAMPLE_TAPS.get(int(interpolation_mode), 4) * n * c * h * w


if torch.ops.aten.grid_sampler_2d not in flop_registry:
    register_flop_formula(torch.ops.aten.grid_sampler_2d)(_grid_sample_flop)


def count_params(model: nn.Module, exclude: tuple[str, ...] = ()) -> dict[str, int]:
    """Total and trainable parameter counts; names starting with a prefix in ``exclude`` are skipped."""
    total = trainable = 0
    for name, param in model.named_parameters():
        if name.startswith(exclude) if exclude else False:
            continue
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return {"total": total, "trainable": trainable}


def params_by_module(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level child module."""
    counts: dict[str, int] = defaultdict(int)
    for name, param in model.named_parameters():
        counts[name.split(".", 1)[0]] += param.numel()
    return dict(counts)


@torch.no_grad()
def count_macs(model: nn.Module, batch: dict) -> tuple[int, dict[str, int]]:
    """MACs of one ``model(batch)`` forward: (total, per top-level child module).

    A child whose forward is bypassed (a model calling ``self.base.encode(...)`` rather than
    ``self.base(...)``) is not seen by the counter's module hooks; its MACs are then the sum over its
    outermost descendants that were called. MACs of ops outside every child go to ``"(outside children)"``
    (rows overlap only where one child calls another's submodule).
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=None)
    with explicit_attention(model), counter:
        model(batch)
    model.train(was_training)
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    per_module: dict[str, int] = defaultdict(int)
    for module_name, flops in counts.items():
        parts = module_name.split(".")
        if len(parts) < 2 or parts[0] != root:
            continue
        # outermost recorded name under the child: no recorded proper prefix below the root
        if not any(".".join(parts[:depth]) in counts for depth in range(2, len(parts))):
            per_module[parts[1]] += flops // 2
    total = counter.get_total_flops() // 2
    outside = total - sum(per_module.values())
    if outside > 0:
        per_module["(outside children)"] = outside
    return total, dict(per_module)
