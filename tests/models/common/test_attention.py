import math

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from risbench.models.common.attention import (Attention, Block, MultiheadAttention, explicit_attention,
                                              sine_positions_2d, sinusoidal_positions)


def test_fused_and_explicit_paths_agree_with_padding_mask():
    torch.manual_seed(0)
    attention = Attention(32, 4).eval()
    x = torch.randn(2, 7, 32)
    pad = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    fused = attention(x, key_padding_mask=pad)
    with explicit_attention(attention):
        assert attention.fused_attn is False
        explicit = attention(x, key_padding_mask=pad)
    assert attention.fused_attn is True
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


def test_padded_keys_are_ignored():
    torch.manual_seed(0)
    attention = Attention(16, 2, context_dim=8).eval()
    x, context = torch.randn(1, 5, 16), torch.randn(1, 4, 8)
    pad = torch.tensor([[False, False, True, True]])
    changed = context.clone()
    changed[:, 2:] = 100.0
    torch.testing.assert_close(attention(x, context, pad), attention(x, changed, pad))


def test_record_attention_rows_sum_to_one():
    attention = Attention(16, 4).eval()
    attention.record_attention = True
    attention(torch.randn(2, 6, 16))
    assert attention.last_attention.shape == (2, 4, 6, 6)
    torch.testing.assert_close(attention.last_attention.sum(-1), torch.ones(2, 4, 6))


def test_explicit_attention_exposes_timm_attention_flops():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=0).eval()
    x = torch.randn(1, 3, 32, 32)

    def flops():
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            vit(x)
        return counter.get_total_flops()

    with explicit_attention(vit):
        explicit = flops()
    tokens, dim, depth = 5, 192, 12  # 4 patches + CLS
    attention_flops = depth * 2 * (2 * tokens * tokens * dim)  # q@k^T and attn@v, 2 FLOPs per MAC
    assert explicit - flops() == attention_flops  # the fused CPU kernel hides its matmuls from the counter


@pytest.mark.parametrize("norm_first", [True, False])
def test_block_shapes_and_norm_placement(norm_first):
    block = Block(24, 4, mlp_dim=48, norm_first=norm_first).eval()
    out = block(torch.randn(3, 5, 24))
    assert out.shape == (3, 5, 24)
    if not norm_first:  # post-LN output is layer-normalised
        torch.testing.assert_close(out.mean(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)


def test_sinusoidal_positions():
    table = sinusoidal_positions(20, 300)
    assert table.shape == (20, 300)
    torch.testing.assert_close(table[0, :6], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))


@pytest.mark.parametrize("kdim", [16, 24])
def test_multihead_attention_is_torch_multihead_attention(kdim):
    """Equal widths (torch packs in_proj_weight) and different ones (separate q/k/v_proj_weight)."""
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(16, 4, kdim=kdim, vdim=kdim, batch_first=True).eval()
    for p in ref.parameters():
        p.data.normal_()
    ours = MultiheadAttention(16, 4, kdim=kdim, vdim=kdim)
    if kdim == 16:
        weights = ref.in_proj_weight.chunk(3)
    else:
        weights = [ref.q_proj_weight, ref.k_proj_weight, ref.v_proj_weight]
    for proj, weight, bias in zip((ours.q_proj, ours.k_proj, ours.v_proj), weights, ref.in_proj_bias.chunk(3)):
        proj.weight.data.copy_(weight)
        proj.bias.data.copy_(bias)
    ours.out_proj.load_state_dict(ref.out_proj.state_dict())
    query, key, value = torch.randn(2, 5, 16), torch.randn(2, 7, kdim), torch.randn(2, 7, kdim)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 4:] = True
    want = ref(query, key, value, key_padding_mask=padding)[0]
    assert torch.allclose(ours(query, key, value, padding), want, atol=1e-5)
    ours.fused_attn = False
    assert torch.allclose(ours(query, key, value, padding), want, atol=1e-5)
    changed = value.clone()
    changed[1, 4:] += 100.0  # padded keys contribute nothing
    assert torch.allclose(ours(query, key, changed, padding), want, atol=1e-5)


def test_sine_positions_2d_are_detrs_normalised_sine():
    h, w, dim = 3, 5, 8
    pos = sine_positions_2d(h, w, dim).view(h, w, dim)
    half, scale = dim // 2, 2 * math.pi
    for i, j in ((0, 0), (2, 4), (1, 3)):
        y, x = (i + 1) / (h + 1e-6) * scale, (j + 1) / (w + 1e-6) * scale
        for k in range(half):
            freq = 10000 ** (2 * (k // 2) / half)
            trig = math.sin if k % 2 == 0 else math.cos
            assert pos[i, j, k].item() == pytest.approx(trig(y / freq), abs=1e-6)         # rows first
            assert pos[i, j, half + k].item() == pytest.approx(trig(x / freq), abs=1e-6)  # then columns
