"""Darknet-53 tower (timm's CSPNet family, ``darknet53``) returning the stage maps a dense head needs.

``DarknetTower(image) -> [C3 (B,256,S/8,S/8), C4 (B,512,S/16,S/16), C5 (B,1024,S/32,S/32)]`` for the default
``out_indices=(3, 4, 5)`` (index 0 = the stem, 1-5 = the five stages). ``net`` is timm's model with its
own parameter names (``stem.*``, ``stages.*``), so a timm checkpoint of the same variant loads as it is; the
classifier is dropped. ``stem_channels`` / ``widths`` / ``depths`` override the named variant's shape (CPU-size models).

Weights: the papers of the MCN/VLT lineage use a Darknet-53 pretrained on COCO detection, which is not
public; the documented default is timm's ImageNet ``darknet53.c2ns_in1k`` (same topology), read from a
local file (the Hugging Face repo's ``model.safetensors``, or timm's release ``.pth``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from timm.models.cspnet import CspNet, model_cfgs
from torch import nn
from torch.utils.checkpoint import checkpoint

from risbench.errors import RisbenchError
from risbench.models.common.weights import load_into, read_state_dict

DARKNET_HINT = ("save timm's ImageNet Darknet-53 weights there (model.safetensors of the Hugging Face repo "
                "timm/darknet53.c2ns_in1k, or timm's release darknet53_256_c2ns-3aeff817.pth); the COCO-pretrained "
                "Darknet-53 of the papers is not public. Or set model.vision.pretrained=false to train from scratch")


class DarknetTower(nn.Module):
    """timm CSPNet-family backbone (``timm_name``) as a list of stage maps; ``dims`` = their channels."""

    def __init__(self, timm_name: str = "darknet53", out_indices: Sequence[int] = (3, 4, 5), pretrained: bool = True,
                 checkpoint: str | None = None, stem_channels: int | None = None,
                 widths: Sequence[int] | None = None, depths: Sequence[int] | None = None):
        super().__init__()
        if timm_name not in model_cfgs:
            raise RisbenchError(f"model.vision.timm_name={timm_name!r} is not a timm CSPNet variant "
                                "(e.g. darknet53, darknet17, cs3darknet_m)")
        cfg = model_cfgs[timm_name]
        stages = replace(cfg.stages, out_chs=tuple(widths or cfg.stages.out_chs),
                         depth=tuple(depths or cfg.stages.depth))
        net = CspNet(replace(cfg, stem=replace(cfg.stem, out_chs=stem_channels or cfg.stem.out_chs), stages=stages),
                     num_classes=0, global_pool="")
        self.out_indices = net.prune_intermediate_layers(list(out_indices))  # drops the classifier
        self.net = net
        self.dims = [net.feature_info[i]["num_chs"] for i in self.out_indices]
        self.reductions = [net.feature_info[i]["reduction"] for i in self.out_indices]
        self.pretrained, self.checkpoint = pretrained, checkpoint
        self.grad_checkpointing = False  # model.grad_checkpointing: timm's CSPNet has no switch of its own

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return self.net.forward_intermediates(image, indices=self.out_indices, intermediates_only=True)
        x = self.net.stem(image)
        index = len(self.net.stem_feat_ends) - 1                            # the stem output's feature index
        outs = [x] if index in self.out_indices else []
        for stage in self.net.stages:                                       # each stage recomputed in backward
            x = checkpoint(stage, x, use_reentrant=False)
            index += 1
            if index in self.out_indices:
                outs.append(x)
        return outs

    def load_pretrained(self) -> None:
        if not self.checkpoint:
            raise RisbenchError("model.vision.pretrained=true but model.vision.checkpoint is not set.\n"
                                f"  how to fix: {DARKNET_HINT}")
        state = read_state_dict(self.checkpoint, "Darknet weights (model.vision.checkpoint)", DARKNET_HINT)
        try:
            load_into(self.net, state, f"Darknet weights {self.checkpoint}", allowed_unexpected=("head.",))
        except RuntimeError as error:  # same names, other shapes: another variant or width
            raise RisbenchError(f"Darknet weights {self.checkpoint} do not fit model.vision "
                                f"({str(error).splitlines()[-1].strip()}).\n  how to fix: use the weights of the "
                                "configured timm_name, without stem_channels/widths/depths overrides") from None
