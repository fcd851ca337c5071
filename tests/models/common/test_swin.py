"""Swin tower over timm: per-stage shapes and loading a checkpoint in the official Swin release layout."""

from __future__ import annotations

import re

import pytest
import torch

from risbench.errors import MissingFileError, RisbenchError
from risbench.models.common.vision.swin import SwinTower

TINY = dict(img_size=64, embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=4,
            drop_path_rate=0.0)


def test_stage_shapes_and_stage_by_stage_iteration():
    torch.manual_seed(0)
    tower = SwinTower(**TINY, pretrained=False, out_norms=True).eval()
    image = torch.randn(2, 3, 64, 64)
    outs = tower(image)
    assert [tuple(o.shape) for o in outs] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]
    x = tower.embed(image)
    for s in range(tower.num_stages):
        x = tower.stage(s, x)
    assert torch.allclose(tower.norms[-1](x).permute(0, 3, 1, 2), outs[-1])


def official_layout(tower: SwinTower) -> dict[str, torch.Tensor]:
    """The tower's weights as the Microsoft release stores them: PatchMerging at the end of the previous
    stage, a final norm and classifier, and the non-persistent buffers saved too."""
    state = {}
    for key, value in tower.state_dict().items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        state[key] = value.clone()
    for name, module in tower.named_modules():
        if hasattr(module, "relative_position_index"):
            state[f"{name}.relative_position_index"] = module.relative_position_index.clone()
        if getattr(module, "attn_mask", None) is not None:
            state[f"{name}.attn_mask"] = module.attn_mask.clone()
    dim = tower.dims[-1]
    state.update({"norm.weight": torch.ones(dim), "norm.bias": torch.zeros(dim),
                  "head.weight": torch.randn(10, dim), "head.bias": torch.zeros(10)})
    return state


def test_loads_the_official_release_layout(tmp_path):
    torch.manual_seed(0)
    source = SwinTower(**TINY, pretrained=False)
    path = tmp_path / "swin_tiny_release.pth"
    state = official_layout(source)
    assert "layers.0.downsample.reduction.weight" in state  # really the release layout
    torch.save({"model": state}, path)

    torch.manual_seed(1)
    tower = SwinTower(**TINY, pretrained=True, checkpoint=str(path), out_norms=True)
    assert not torch.equal(tower.layers[1].downsample.reduction.weight, source.layers[1].downsample.reduction.weight)
    tower.load_pretrained()
    loaded = tower.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value), key
    image = torch.randn(1, 3, 64, 64)
    source.eval(), tower.eval()
    assert torch.allclose(tower.stage(0, tower.embed(image)), source.stage(0, source.embed(image)))


def test_missing_checkpoint_says_where_to_get_it(tmp_path):
    tower = SwinTower(**TINY, pretrained=True, checkpoint=str(tmp_path / "swin_base_patch4_window12_384_22k.pth"))
    with pytest.raises(MissingFileError, match="Swin-Transformer releases"):
        tower.load_pretrained()


def test_checkpoint_of_another_size_is_refused(tmp_path):
    other = SwinTower(**{**TINY, "depths": (1, 1, 1, 1)}, pretrained=False)
    path = tmp_path / "other.pth"
    torch.save({"model": official_layout(other)}, path)
    tower = SwinTower(**TINY, pretrained=True, checkpoint=str(path))
    with pytest.raises(RisbenchError, match="missing keys"):
        tower.load_pretrained()
