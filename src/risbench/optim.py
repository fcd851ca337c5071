"""Optimizer parameter groups and per-iteration learning-rate schedules, all driven by config.

Config (``optim:`` node, see README "Optimisation"):

* ``param_groups``: ``[{name, pattern, lr_mult}]`` -- a parameter joins the first group whose regex
  ``pattern`` matches its name (``re.search``); the rest form group ``default`` (lr_mult 1).
* ``no_decay``: ``{norms, biases, position, patterns}`` -- parameters exempt from weight decay
  (normalisation weights, biases, position tables, extra regexes, and the model's ``no_weight_decay()``).
* ``scheduler``: a ``_partial_`` factory called as ``scheduler(optimizer, total_steps=N)`` returning a
  ``LambdaLR`` stepped every iteration.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from risbench.errors import RisbenchError

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
_POSITION_PATTERN = re.compile(r"pos_embed|position|relative_position_bias_table|absolute_pos|cls_token")


def _norm_parameter_names(model: nn.Module) -> set[str]:
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES) or type(module).__name__.endswith(("LayerNorm", "RMSNorm")):
            for param_name, _ in module.named_parameters(recurse=False):
                names.add(f"{module_name}.{param_name}" if module_name else param_name)
    return names


def _is_no_decay(name: str, param: torch.Tensor, norm_names: set[str], no_decay: dict,
                 model_exempt: set[str]) -> bool:
    if name in model_exempt:
        return True
    if no_decay.get("norms") and name in norm_names:
        return True
    if no_decay.get("biases") and name.endswith("bias") and param.ndim == 1:
        return True
    if no_decay.get("position") and _POSITION_PATTERN.search(name):
        return True
    return any(re.search(pattern, name) for pattern in no_decay.get("patterns") or ())


def build_param_groups(model: nn.Module, base_lr: float, weight_decay: float,
                       param_groups: Sequence[dict] = (), no_decay: dict | None = None) -> list[dict]:
    """Split trainable parameters into named groups with lr multipliers and weight-decay exemptions.

    Each returned group carries ``name`` (``<group>`` or ``<group>/no_decay``) so the LR monitor and
    tests can tell them apart. Raises if a configured pattern matches no parameter (a typo guard).
    """
    no_decay = dict(no_decay or {})
    norm_names = _norm_parameter_names(model)
    exempt = getattr(model, "no_weight_decay", lambda: set())()
    specs = [dict(spec) for spec in param_groups or ()]
    for spec in specs:
        if "pattern" not in spec:
            raise RisbenchError(f"optim.param_groups entry {spec} has no 'pattern' (a regex on parameter names)")
    buckets: dict[tuple[str, bool], list[torch.Tensor]] = {}
    mults: dict[str, float] = {spec.get("name", spec["pattern"]): float(spec.get("lr_mult", 1.0)) for spec in specs}
    mults["default"] = 1.0
    matched = {name: False for name in mults}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = next((spec.get("name", spec["pattern"]) for spec in specs if re.search(spec["pattern"], name)),
                     "default")
        matched[group] = True
        decay_off = _is_no_decay(name, param, norm_names, no_decay, exempt)
        buckets.setdefault((group, decay_off), []).append(param)
    unmatched = [name for name, hit in matched.items() if not hit and name != "default"]
    if unmatched:
        raise RisbenchError(f"optim.param_groups {unmatched} match no trainable parameter; check the regex "
                            "against the model's parameter names (python -m risbench mode=profile lists modules)")
    groups = []
    for (group, decay_off), params in buckets.items():
        groups.append({
            "name": f"{group}/no_decay" if decay_off else group,
            "params": params,
            "lr": base_lr * mults[group],
            "weight_decay": 0.0 if decay_off else weight_decay,
        })
    return groups


def _lambda_schedule(optimizer: torch.optim.Optimizer, factor: Callable[[int], float]) -> LambdaLR:
    return LambdaLR(optimizer, lr_lambda=factor)


def poly_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                  power: float = 0.9) -> LambdaLR:
    """Linear warm-up 0 -> lr over ``warmup_steps``, then ``(1 - t'/T')^power`` down to 0 at ``total_steps``."""
    decay_steps = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return max(0.0, 1.0 - (step - warmup_steps) / decay_steps) ** power

    return _lambda_schedule(optimizer, factor)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                    min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up, then half-cosine from lr to ``min_lr_ratio * lr`` at ``total_steps``."""
    decay_steps = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return _lambda_schedule(optimizer, factor)


def step_schedule(optimizer: torch.optim.Optimizer, total_steps: int, milestones: Sequence[float] = (0.5, 0.75),
                  gamma: float = 0.1, warmup_steps: int = 0) -> LambdaLR:
    """Multiply lr by ``gamma`` at each milestone; milestones < 1 are fractions of ``total_steps``."""
    points = sorted(int(m * total_steps) if m < 1 else int(m) for m in milestones)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return gamma ** sum(step >= point for point in points)

    return _lambda_schedule(optimizer, factor)

