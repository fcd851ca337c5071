"""Multi-scale deformable attention against a direct per-point bilinear reference written here."""

from __future__ import annotations

import math

import pytest
import torch

from risbench.models.common.attention import explicit_attention
from risbench.models.common.deformable import MSDeformAttn, multi_scale_deformable_attention, reference_points
from risbench.profiling import count_macs

SHAPES = [(3, 5), (2, 7), (4, 1)]  # non-square levels, one a single column


def bilinear_at(level: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """level (H, W, D) read at (x, y) in [0, 1] (align_corners=False: pixel centres at (j + 0.5) / W),
    zeros outside the map: the four neighbours weighted by their distance, one by one."""
    H, W, _ = level.shape
    px, py = x * W - 0.5, y * H - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(level.shape[-1], dtype=level.dtype)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < H and 0 <= xx < W:
                out = out + wy * wx * level[yy, xx]
    return out


def reference(value, shapes, locations, weights) -> torch.Tensor:
    """value (B,S,M,D), locations (B,Q,M,L,P,2), weights (B,Q,M,L,P) -> (B,Q,M*D), point by point."""
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(B, Q, M, D, dtype=value.dtype)
    for b in range(B):
        for m in range(M):
            levels = [value[b, starts[l]:starts[l + 1], m].reshape(h, w, D) for l, (h, w) in enumerate(shapes)]
            for q in range(Q):
                for l in range(L):
                    for p in range(P):
                        x, y = locations[b, q, m, l, p].tolist()
                        out[b, q, m] += weights[b, q, m, l, p] * bilinear_at(levels[l], x, y)
    return out.reshape(B, Q, M * D)


def inputs(dtype, B=2, Q=6, M=2, D=3, P=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in SHAPES)
    value = torch.randn(B, S, M, D, generator=g, dtype=dtype)
    # some points fall outside the map (partly or wholly): zeros padding must apply
    locations = torch.rand(B, Q, M, len(SHAPES), P, 2, generator=g, dtype=dtype) * 1.4 - 0.2
    weights = torch.rand(B, Q, M, len(SHAPES), P, generator=g, dtype=dtype)
    return value, locations, weights


@pytest.mark.parametrize("counted", [False, True])
def test_matches_the_per_point_reference_in_fp64(counted):
    value, locations, weights = inputs(torch.float64)
    got = multi_scale_deformable_attention(value, SHAPES, locations, weights, counted=counted)
    want = reference(value, SHAPES, locations, weights)
    assert got.shape == want.shape == (2, 6, 6)
    assert torch.allclose(got, want, atol=1e-10, rtol=0)
    outside = locations.clone()
    outside[..., 0] = 1.5  # every point right of every map: nothing to sample
    assert torch.equal(multi_scale_deformable_attention(value, SHAPES, outside, weights), torch.zeros_like(got))


def test_matches_the_reference_in_fp32():
    value, locations, weights = inputs(torch.float32, seed=1)
    want = reference(value.double(), SHAPES, locations.double(), weights.double())
    for counted in (False, True):
        got = multi_scale_deformable_attention(value, SHAPES, locations, weights, counted=counted)
        assert torch.allclose(got.double(), want, atol=1e-4, rtol=0)


def test_pixel_centres_return_the_stored_values():
    value, _, _ = inputs(torch.float64, B=1, Q=1, M=1, D=2)
    centres = reference_points(SHAPES, dtype=torch.float64)                 # (S, 2)
    S, L = centres.shape[0], len(SHAPES)
    locations = centres[None, :, None, None, None, :].expand(1, S, 1, L, 1, 2).clone()
    weights = torch.zeros(1, S, 1, L, 1, dtype=torch.float64)
    level_of = torch.repeat_interleave(torch.arange(L), torch.tensor([h * w for h, w in SHAPES]))
    weights[0, torch.arange(S), 0, level_of, 0] = 1.0                      # each query reads its own level
    got = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    assert torch.allclose(got[0], value[0, :, 0], atol=1e-12)


def test_gradcheck_fp64():
    value, locations, weights = inputs(torch.float64, B=1, Q=3, M=2, D=2, P=2, seed=2)
    args = [t.clone().requires_grad_() for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(lambda v, loc, w: multi_scale_deformable_attention(v, SHAPES, loc, w),
                                    args, eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(
        lambda v, loc, w: multi_scale_deformable_attention(v, SHAPES, loc, w, counted=True), args, eps=1e-6, atol=1e-7)


def module_and_inputs(seed=0):
    torch.manual_seed(seed)
    attn = MSDeformAttn(d_model=16, n_levels=len(SHAPES), n_heads=4, n_points=2).double()
    for p in attn.parameters():  # away from the init's zeros so offsets and weights matter
        p.data.add_(0.1 * torch.randn_like(p))
    S = sum(h * w for h, w in SHAPES)
    src = torch.randn(2, S, 16, dtype=torch.float64)
    ref = reference_points(SHAPES, dtype=torch.float64)[None, :, None].expand(2, S, len(SHAPES), 2)
    return attn, src, ref


def test_module_is_projections_around_the_reference_sampling():
    attn, src, ref = module_and_inputs()
    query = src + 0.3
    got = attn(query, ref, src, SHAPES)
    B, S, _ = src.shape
    M, L, P = 4, len(SHAPES), 2
    value = attn.value_proj(src).view(B, S, M, 4)
    offsets = attn.sampling_offsets(query).view(B, S, M, L, P, 2)
    weights = attn.attention_weights(query).view(B, S, M, L * P).softmax(-1).view(B, S, M, L, P)
    size = torch.tensor([[w, h] for h, w in SHAPES], dtype=torch.float64)  # offsets are in pixels (x by W, y by H)
    locations = ref[:, :, None, :, None, :] + offsets / size[:, None, :]
    want = attn.output_proj(reference(value, SHAPES, locations, weights))
    assert torch.allclose(got, want, atol=1e-10)
    with explicit_attention(attn):
        assert torch.allclose(attn(query, ref, src, SHAPES), got, atol=1e-12)


def test_init_samples_on_rings_around_the_reference_with_uniform_weights():
    attn = MSDeformAttn(d_model=32, n_levels=3, n_heads=8, n_points=4)
    bias = attn.sampling_offsets.bias.view(8, 3, 4, 2)
    assert torch.equal(bias[:, 0], bias[:, 2])                               # the same on every level
    assert torch.allclose(bias[0, 0, :, 0], torch.tensor([1.0, 2.0, 3.0, 4.0]))  # head 0 along +x
    assert torch.allclose(bias.abs().amax(-1), torch.arange(1, 5.0).expand(8, 3, 4))  # point p on ring p + 1
    assert attn.attention_weights.weight.abs().sum() == 0 and attn.attention_weights.bias.abs().sum() == 0


def test_padding_mask_zeroes_those_values():
    attn, src, ref = module_and_inputs(seed=3)
    mask = torch.zeros(src.shape[:2], dtype=torch.bool)
    mask[:, :15] = True  # the whole first level
    changed = src.clone()
    changed[:, :15] += 5.0
    assert torch.allclose(attn(src, ref, src, SHAPES, mask), attn(src, ref, changed, SHAPES, mask), atol=1e-12)


def test_mac_count_includes_sampling_and_weighted_sum():
    attn, src, ref = module_and_inputs()
    attn = attn.float()
    src, ref = src.float()[:1], ref.float()[:1]
    S, C = src.shape[1], 16
    M, L, P, D = 4, len(SHAPES), 2, 4

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, batch):
            return self.attn(batch["q"], ref, batch["q"], SHAPES)

    total, _ = count_macs(Wrap(), {"q": src})
    projections = S * C * (C + C + M * L * P * 2 + M * L * P)    # value, output, offsets, weights
    sampling = 4 * S * M * L * P * D                              # 4 bilinear taps per sampled value
    weighted_sum = S * M * L * P * D
    assert total == projections + sampling + weighted_sum


def test_runs_on_gpu_like_on_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    value, locations, weights = inputs(torch.float32, seed=4)
    cpu = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    gpu = multi_scale_deformable_attention(value.cuda(), SHAPES, locations.cuda(), weights.cuda())
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)
