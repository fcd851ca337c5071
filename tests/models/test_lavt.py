"""LAVT fidelity (spec papers/sadlr.md §2.2, §7) and behaviour; no pretrained weights needed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from risbench.losses import dice_loss
from risbench.models.common.vision.swin import SwinTower
from risbench.models.lavt import LAVT, PWAM
from risbench.profiling import count_macs
from tests.helpers import bf16_forward_and_loss, build_model, overfit_losses

TEXT = dict(pretrained=False, num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
            max_positions=32, trainable="all")
VISION = dict(pretrained=False, img_size=64, embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8],
              window_size=4, drop_path_rate=0.0)
VOCAB = 50


def tiny(**overrides) -> LAVT:
    torch.manual_seed(0)
    return build_model("lavt", VOCAB, text=TEXT, vision=VISION, channels=32, **overrides).eval()


def make_batch(batch_size: int = 2, size: int = 64, length: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCAB, (batch_size, length), generator=g)
    mask = torch.ones(batch_size, length, dtype=torch.long)
    mask[-1, length // 2:] = 0  # right padding
    return {"image": torch.randn(batch_size, 3, size, size, generator=g), "tokens": tokens * mask,
            "attention_mask": mask, "mask": (torch.rand(batch_size, 1, size, size, generator=g) > 0.7).float()}


def test_forward_shapes_loss_and_mask_logits():
    model = tiny()
    batch = make_batch()
    out = model(batch)
    (logits,) = out["logits"]
    assert logits.shape == (2, 2, 16, 16)  # H/4
    fg = model.mask_logits(out)
    up = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=True)
    assert fg.shape == (2, 1, 64, 64) and torch.allclose(fg, up[:, 1:2] - up[:, :1], atol=1e-6)
    ce = model.loss(out, batch)["loss"]
    assert torch.isclose(ce, F.cross_entropy(up, batch["mask"][:, 0].long(), weight=torch.tensor([0.9, 1.1])))
    dice = tiny(loss=dict(name="dice")).loss(out, batch)["loss"]
    assert torch.isclose(dice, dice_loss(up, batch["mask"]))
    both = tiny(loss=dict(name="dice_ce")).loss(out, batch)["loss"]
    assert torch.isclose(both, ce + dice)


def test_loss_decreases_on_a_fixed_batch():
    model = tiny().train()
    batch = make_batch()
    batch["mask"] = torch.zeros_like(batch["mask"])
    batch["mask"][..., 8:40, 16:48] = 1.0
    losses = overfit_losses(model, batch)
    assert losses[-1] < 0.7 * losses[0], losses


def test_pwam_ignores_padded_words_and_uses_real_ones():
    torch.manual_seed(0)
    pwam = PWAM(16, 24).eval()
    x, words = torch.randn(2, 30, 16), torch.randn(2, 6, 24)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    out = pwam(x, words, mask)
    changed = words.clone()
    changed[0, 4:] = torch.randn(2, 24) * 10
    assert torch.equal(pwam(x, changed, mask)[0], out[0])
    changed[0, 1] += 1.0
    assert not torch.allclose(pwam(x, changed, mask)[0], out[0])
    pwam.fused_attn = False  # explicit matmul path (FLOP counting) computes the same
    assert torch.allclose(pwam(x, words, mask), out, atol=1e-5)


def stage_inputs(model: LAVT, batch: dict) -> list[torch.Tensor]:
    """Tokens entering Swin stages 2..4 (what the gated pathway hands on)."""
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
             for layer in model.vision.swin.layers[1:]]
    model(batch)
    for hook in hooks:
        hook.remove()
    return seen


def test_zero_gate_passes_pure_swin_tokens_and_lavt_init_does_not():
    batch = make_batch()
    model = tiny(gate_init="zero")
    pure = SwinTower(**VISION).eval()
    pure.load_state_dict(model.vision.swin.state_dict())
    x = pure.embed(batch["image"])
    expected = []
    for s in range(pure.num_stages - 1):
        x = pure.stage(s, x)
        expected.append(x)
    for got, want in zip(stage_inputs(model, batch), expected):
        assert torch.allclose(got, want, atol=1e-6)
    gated = tiny(gate_init="lavt")
    gated.load_state_dict({k: v for k, v in model.state_dict().items() if ".gates." not in k}, strict=False)
    assert not torch.allclose(stage_inputs(gated, batch)[0], expected[0])


def test_zero_gate_is_a_dead_fixed_point():
    """Why gate_init defaults to LAVT's effective trunc-normal init: zero weights get zero gradient."""
    batch = make_batch()
    for init, dead in (("zero", True), ("lavt", False)):
        model = tiny(gate_init=init).train()
        model.loss(model(batch), batch)["loss"].backward()
        grads = [p.grad.abs().sum().item() for p in model.vision.gates.parameters()]
        assert (max(grads) == 0.0) is dead, (init, grads)


def test_last_stage_has_no_gate_and_every_parameter_gets_a_gradient():
    model = tiny().train()
    assert len(model.vision.gates) == len(model.vision.pwams) - 1
    batch = make_batch()
    model.loss(model(batch), batch)["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_bf16_autocast_runs_on_cpu():
    model = tiny(loss=dict(name="dice"))
    batch = make_batch()
    out, loss = bf16_forward_and_loss(model, batch)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert torch.isfinite(model.mask_logits(out)).all()


# --- full size (Swin-B, BERT-base, 480 px): one forward, shared ---

@pytest.fixture(scope="module")
def lavt_480():
    torch.manual_seed(0)
    model = build_model("lavt", 30522, text=dict(pretrained=False), vision=dict(pretrained=False, img_size=480))
    batch = {"image": torch.randn(1, 3, 480, 480), "tokens": torch.randint(1, 30522, (1, 20)),
             "attention_mask": torch.ones(1, 20, dtype=torch.long)}
    shapes = {}
    hooks = [model.vision.register_forward_hook(lambda m, a, out: shapes.update(stages=[o.shape for o in out])),
             model.decoder.register_forward_hook(lambda m, a, out: shapes.update(Y=out.shape))]
    macs, per_module = count_macs(model, batch)
    for hook in hooks:
        hook.remove()
    return model, macs, per_module, shapes


@pytest.mark.slow
def test_full_size_shapes(lavt_480):
    _, _, _, shapes = lavt_480
    assert [tuple(s) for s in shapes["stages"]] == [(1, 128, 120, 120), (1, 256, 60, 60), (1, 512, 30, 30),
                                                    (1, 1024, 15, 15)]
    assert tuple(shapes["Y"]) == (1, 512, 120, 120)


@pytest.mark.slow
def test_full_size_macs_match_table3(lavt_480):
    """Table 3: LAVT 197.4 G "FLOPs" = fvcore's count, where one multiply-add is one FLOP = our MACs."""
    _, macs, per_module, _ = lavt_480
    assert abs(macs / 197.4e9 - 1) < 0.05, macs / 1e9
    assert abs(per_module["decoder"] / 106e9 - 1) < 0.02  # spec §7.3: the decoder alone is ~106 G
