"""ViT tower (timm) and the loading of timm / Google checkpoints into it (ReSTR's vision encoder)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import timm
from timm.models.vision_transformer import VisionTransformer, _load_weights, checkpoint_filter_fn

from risbench.errors import MissingFileError, RisbenchError
from risbench.models.common.weights import load_into, read_state_dict


def build_vit(timm_name: str | None, img_size: int, drop_path_rate: float, arch: Mapping | None = None
              ) -> VisionTransformer:
    """The vision tower without head: a timm model by name (``arch`` overrides its dims) or explicit dims.

    ``global_pool=''``: calling the tower returns every token after the final LN (B, 1+N, D).
    """
    arch = {"num_classes": 0, "global_pool": "", **(arch or {})}
    if timm_name:
        return timm.create_model(timm_name, pretrained=False, img_size=img_size, drop_path_rate=drop_path_rate,
                                 **arch)
    return VisionTransformer(img_size=img_size, drop_path_rate=drop_path_rate, **arch)


def load_vit_checkpoint(vit: VisionTransformer, path: str | Path, timm_name: str | None) -> None:
    """Load a timm-compatible ViT checkpoint; position embeddings are resampled to the model's grid.

    ``.npz``: the official Google (big_vision / AugReg) layout through timm's own loader. ``.pth/.bin/
    .safetensors``: a timm state dict through timm's ``checkpoint_filter_fn``.
    """
    path = Path(path).expanduser()
    source = (f"the timm checkpoint '{timm_name}' (the model.safetensors file of huggingface.co/timm/{timm_name})"
              if timm_name else "a timm VisionTransformer checkpoint of the configured size")
    hint = (f"download {source}, save it at this path (or point model.vision.checkpoint at it), "
            "or set model.vision.pretrained=false to train the ViT from scratch")
    if not path.is_file():
        raise MissingFileError("ViT checkpoint", path, hint)
    if path.suffix == ".npz":
        try:
            _load_weights(vit, str(path))
        except (KeyError, ValueError) as exc:
            raise RisbenchError(f"ViT checkpoint {path} is not in the official npz layout of this "
                                f"ViT ({type(exc).__name__}: {exc})") from None
        return
    state = read_state_dict(path, "ViT checkpoint", hint)
    state = checkpoint_filter_fn(state, vit)
    load_into(vit, state, f"ViT checkpoint {path}", allowed_unexpected=("head.", "fc_norm.", "pre_logits."))
