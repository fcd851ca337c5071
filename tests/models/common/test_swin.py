"""Swin tower over timm: the official pad-then-shift windows, per-stage shapes, and loading a checkpoint in
the official Swin release layout."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock

from risbench.errors import MissingFileError, RisbenchError
from risbench.models.common.vision.swin import PadThenShiftBlock, SwinTower
from tests.official_swin import official_block

TINY = dict(img_size=64, embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=4,
            drop_path_rate=0.0)


def perturbed_block(cls, size: tuple[int, int], window: int, shift: int, dim: int = 16, heads: int = 2, **kwargs):
    """A block whose every parameter is random and not small (so a wrong bias, mask or order shows):
    Linear weights at std fan_in^-0.5, everything else (relative-position table included) at std 1."""
    torch.manual_seed(0)
    block = cls(dim=dim, input_resolution=size, num_heads=heads, window_size=window, shift_size=shift, **kwargs)
    with torch.no_grad():
        for name, param in block.named_parameters():
            linear = param.ndim == 2 and "relative_position" not in name
            param.copy_(torch.randn_like(param) * (param.shape[1] ** -0.5 if linear else 1.0))
    return block.eval()


# grid, window, shift: LAVT's 480 px stage 4 (15 -> 24 padded), a rectangle that pads differently in H and W,
# a grid equal to the window and one smaller than it (timm would drop the shift / shrink the window there),
# and a divisible grid (where timm's roll-then-pad order gives the same result)
CASES = [((15, 15), 12, 6), ((5, 7), 3, 1), ((4, 4), 4, 2), ((2, 2), 4, 0), ((2, 3), 4, 2), ((8, 8), 4, 2)]


@pytest.mark.parametrize("size, window, shift", CASES)
def test_block_is_the_official_pad_then_shift_block(size, window, shift):
    block = perturbed_block(PadThenShiftBlock, size, window, shift, always_partition=True)
    assert block.window_size == (window, window) and block.shift_size == (shift, shift)
    x = torch.randn(2, *size, 16)
    with torch.no_grad():
        want = official_block(block, x, window, shift)
        assert torch.allclose(block(x), want, atol=1e-5)
        block.attn.fused_attn = not block.attn.fused_attn  # the other attention path computes the same
        assert torch.allclose(block(x), want, atol=1e-5)


def test_every_window_attention_runs_sdpa_until_explicit_attention_is_asked_for():
    from risbench.models.common.attention import explicit_attention

    tower = SwinTower(**TINY, pretrained=False)
    attentions = [block.attn for stage in tower.layers for block in stage.blocks]
    assert all(attention.fused_attn for attention in attentions)  # timm's own default is explicit
    with explicit_attention(tower):
        assert not any(attention.fused_attn for attention in attentions)


@pytest.mark.parametrize("train, bf16, fused", [(False, False, True), (False, True, True), (True, False, True),
                                               (True, True, False)])
def test_window_attention_leaves_sdpa_only_for_bf16_training_on_cpu(monkeypatch, train, bf16, fused):
    """CPU SDPA cannot give a bf16 mask its gradient in a fused kernel (it upcasts to fp32 math), so bf16
    training takes timm's explicit matmuls; everything else runs SDPA."""
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    tower = SwinTower(**TINY, pretrained=False).train(train)
    with torch.set_grad_enabled(train), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        tower(torch.randn(1, 3, 64, 64))
    assert bool(calls) is fused
    assert all(block.attn.fused_attn for stage in tower.layers for block in stage.blocks)


# timm's own block: rolls before padding (15x15, 5x7), drops the shift on a grid not larger than the window
# (4x4); the same as the official block on a divisible grid larger than the window (8x8)
@pytest.mark.parametrize("size, window, shift, same", [((15, 15), 12, 6, False), ((5, 7), 3, 1, False),
                                                       ((4, 4), 4, 2, False), ((8, 8), 4, 2, True)])
def test_timm_block_differs_where_the_grid_is_padded_or_not_larger_than_the_window(size, window, shift, same):
    ours = perturbed_block(PadThenShiftBlock, size, window, shift, always_partition=True)
    timm_block = perturbed_block(SwinTransformerBlock, size, window, shift)
    timm_block.load_state_dict(ours.state_dict())
    x = torch.randn(2, *size, 16)
    with torch.no_grad():
        assert torch.allclose(ours(x), timm_block(x), atol=1e-5) is same


def test_small_grids_keep_window_and_shift():
    """64 px, window 4: stage 3 is 4x4 (still shifted) and stage 4 2x2 (one padded 4x4 window, 7x7 table)."""
    tower = SwinTower(**TINY, pretrained=False)
    stage3, stage4 = tower.layers[2], tower.layers[3]
    assert [b.shift_size for b in stage3.blocks] == [(0, 0), (2, 2)]
    assert stage4.blocks[0].window_size == (4, 4)
    assert stage4.blocks[0].attn.relative_position_bias_table.shape == (49, 8)


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
