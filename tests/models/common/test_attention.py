import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from risbench.models.common.attention import (Attention, Block, MultiheadAttention, explicit_attention,
                                              sinusoidal_positions)


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


def test_multihead_attention_equals_torch_on_the_same_weights():
    torch.manual_seed(0)
    ours = MultiheadAttention(32, 4).eval()
    reference = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.k.weight, ours.v.weight]))
        reference.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.k.bias, ours.v.bias]))
        reference.out_proj.weight.copy_(ours.proj.weight)
        reference.out_proj.bias.copy_(ours.proj.bias)
    query, key, value = torch.randn(2, 5, 32), torch.randn(2, 7, 32), torch.randn(2, 7, 32)
    pad = torch.tensor([[False] * 7, [False] * 3 + [True] * 4])
    expected = reference(query, key, value, key_padding_mask=pad, need_weights=False)[0]
    torch.testing.assert_close(ours(query, key, value, key_padding_mask=pad), expected, atol=1e-5, rtol=1e-5)
    with explicit_attention(ours):
        torch.testing.assert_close(ours(query, key, value, key_padding_mask=pad), expected, atol=1e-5, rtol=1e-5)


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
