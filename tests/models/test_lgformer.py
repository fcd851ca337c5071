"""LGFormer fidelity (spec papers/lgformer.md §7, checks 1-11) and behaviour; no pretrained weights needed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from risbench.errors import RisbenchError
from risbench.evaluation import Protocol
from risbench.losses import dice_loss
from risbench.metrics import ReferringSegmentationMetrics
from risbench.models.common.attention import explicit_attention
from risbench.models.common.text import masked_mean
from risbench.models.lgformer import InferenceInPlaceReLU, LGFormer, PixelDecoder
from risbench.optim import build_param_groups, poly_schedule
from risbench.profiling import count_macs, count_params
from tests.helpers import bf16_forward_and_loss, build_model, compose_config, overfit_losses

VOCAB = 50
TEXT = dict(pretrained=False, num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, max_positions=32,
            trainable="all", dropout=0.0)
VISION = dict(pretrained=False, img_size=64, embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8],
              window_size=4, drop_path_rate=0.0)
PIXEL = dict(dim=32, mask_dim=32, ffn_dim=64, l2va_ffn_dim=64, norm_groups=8)
DECODER = dict(ffn_dim=64)


def tiny(overrides: tuple = (), seed: int = 0, **nodes) -> LGFormer:
    torch.manual_seed(seed)
    merged = {"text": TEXT, "vision": VISION, "pixel_decoder": PIXEL, "decoder": DECODER}
    for key, value in nodes.items():
        merged[key] = {**merged.get(key, {}), **value}
    return build_model("lgformer", VOCAB, list(overrides), **merged).eval()


def make_batch(batch_size: int = 2, size: int = 64, length: int = 20, seed: int = 0, real=(20, 7)) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch_size, length, dtype=torch.long)
    for row, n in enumerate(real[:batch_size]):
        mask[row, :n] = 1
    tokens = torch.randint(1, VOCAB, (batch_size, length), generator=g) * mask
    return {"image": torch.randn(batch_size, 3, size, size, generator=g), "tokens": tokens, "attention_mask": mask,
            "mask": (torch.rand(batch_size, 1, size, size, generator=g) > 0.7).float()}


def record_inputs(module: torch.nn.Module, store: list):
    return module.register_forward_pre_hook(lambda m, args: store.append([a.detach().clone() if
                                                                          torch.is_tensor(a) else a for a in args]))


# --- 1. shapes (full size, 480 px, B=2, T=20) and parameter counts ---

@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return build_model("lgformer", 30522, text=dict(pretrained=False), vision=dict(pretrained=False, img_size=480))


@pytest.mark.slow
def test_paper_size_shapes_and_round_robin(paper_model):
    model = paper_model.eval()
    batch = make_batch(2, 480, seed=1)
    batch["tokens"] = torch.randint(1, 30522, (2, 20)) * batch["attention_mask"]
    keys: list = []
    hooks = [layer.cross_attn.register_forward_pre_hook(lambda m, args: keys.append(args[1].shape[1]))
             for layer in model.decoder.layers]
    tokens: list = []
    hooks.append(record_inputs(model.pixel_decoder.layers[0], tokens))
    with torch.no_grad():
        out = model(batch)
    for hook in hooks:
        hook.remove()
    assert [tuple(s.shape) for s in out["stages"]] == [(2, 128, 120, 120), (2, 256, 60, 60), (2, 512, 30, 30),
                                                       (2, 1024, 15, 15)]
    assert tuple(tokens[0][0].shape) == (2, 225 + 900 + 3600, 256)       # the pixel decoder's 4725 tokens
    assert tuple(out["mask_features"].shape) == (2, 256, 120, 120)
    assert tuple(out["logits"].shape) == (2, 7, 120, 120)                 # 7 maps before upsampling
    assert tuple(model.mask_logits(out).shape) == (2, 1, 480, 480)
    assert tuple(out["text"].shape) == (2, 20, 768)
    assert keys == [225, 900, 3600, 225, 900, 3600]                      # layer l attends to [P32,P16,P8][l mod 3]


def test_paper_size_parameters(paper_model):
    model = paper_model
    total = count_params(model)["total"]
    # the authors' code, random init: 273,239,993 -- it also holds the last stage's two unused gates
    unused_last_gates = 2 * 1024 * 1024 + 2 * 768 * 768
    assert total + unused_last_gates == 273_239_993
    assert abs(total / 273.2e6 - 1) < 0.015

    def params(module) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e6

    encoder = model.encoder
    per_stage = [params(f) + params(encoder.vision_gates[s]) + params(encoder.text_gates[s]) if s < 3 else
                 params(f) + unused_last_gates / 1e6 for s, f in enumerate(encoder.fusions)]
    assert [round(p, 2) for p in per_stage] == [4.56, 5.25, 7.41, 14.89]   # spec §4: VLBA + gates per stage
    assert round(params(model.pixel_decoder), 1) == 15.0
    assert round(sum(params(layer.text_attn) for layer in model.pixel_decoder.layers), 2) == 9.46
    assert round(params(model.decoder), 1) == 29.0
    assert round(sum(params(layer.cross_attn) for layer in model.decoder.layers), 2) == 9.46
    assert round(params(model.head), 2) == 1.38
    assert round(params(encoder.swin), 1) == 86.9 and round(params(model.text), 1) == 108.9


@pytest.mark.slow
def test_paper_size_macs_count_the_deformable_sampling(paper_model):
    batch = {"image": torch.randn(1, 3, 480, 480), "tokens": torch.randint(1, 30522, (1, 20)),
             "attention_mask": torch.ones(1, 20, dtype=torch.long)}
    total, per_module = count_macs(paper_model, batch)
    # per layer: 8 heads x 32 channels x 3 levels x 4 points x 4725 queries, 4 bilinear taps + 1 weighted sum
    sampled = 8 * 32 * 3 * 4 * 4725
    with_sampling = per_module["pixel_decoder"]
    assert sampled * 5 * 6 < with_sampling
    # measured here (no figure in the paper): Swin-B + VLBA 94.0, pixel decoder 65.2, generator 3.8 GMACs
    assert round(total / 1e9, 1) == 164.7
    assert round(per_module["encoder"] / 1e9, 1) == 94.0 and round(with_sampling / 1e9, 1) == 65.2


# --- 2. VLBA ---

def test_zero_gates_pass_v_and_l_unchanged_while_vm_is_not_zero():
    model = tiny()
    batch = make_batch()
    for gate in [*model.encoder.vision_gates, *model.encoder.text_gates]:
        assert gate.fc1.weight.abs().sum() > 0 and gate.fc2.weight.abs().sum() > 0  # default init: trunc-normal
        torch.nn.init.zeros_(gate.fc2.weight)
    stage_inputs: list = []
    hooks = [record_inputs(layer, stage_inputs) for layer in model.encoder.swin.layers[1:]]
    fusion_inputs: list = []
    hooks += [record_inputs(fusion, fusion_inputs) for fusion in model.encoder.fusions]
    fusion_outputs: list = []
    hooks += [f.register_forward_hook(lambda m, a, out: fusion_outputs.append(out)) for f in model.encoder.fusions]
    stage_outputs: list = []
    hooks += [layer.register_forward_hook(lambda m, a, out: stage_outputs.append(out))
              for layer in model.encoder.swin.layers[:-1]]
    with torch.no_grad():
        model(batch)
    for hook in hooks:
        hook.remove()
    for s in range(3):
        assert torch.equal(stage_inputs[s][0], stage_outputs[s])              # V' == V
        assert torch.equal(fusion_inputs[s + 1][1], fusion_inputs[0][1] * batch["attention_mask"][..., None])  # L'
        vision_m, text_m = fusion_outputs[s]
        assert vision_m.abs().amax() > 0.01 and text_m.abs().amax() > 0.01


def test_vlba_softmaxes_over_real_words_and_over_pixels():
    model = tiny()
    attention = model.encoder.fusions[0].attention
    attention.record_attention = True
    batch = make_batch()
    with torch.no_grad():
        model(batch)
    over_words, over_pixels = attention.last_attention                       # (B, HW, T), (B, T, HW)
    real = batch["attention_mask"].bool()
    assert torch.allclose(over_words.sum(-1), torch.ones(2, 256), atol=1e-5)
    assert over_words[1][:, ~real[1]].abs().max() < 1e-30                  # no weight on padded words
    assert torch.allclose(over_pixels.sum(-1), torch.ones(2, 20), atol=1e-5)  # per word, over the HW pixels
    attention.record_attention = False
    with explicit_attention(model), torch.no_grad():  # the fused (SDPA) and explicit paths agree
        explicit = model(batch)["logits"]
    with torch.no_grad():
        assert torch.allclose(model(batch)["logits"], explicit, atol=1e-4)


@pytest.mark.parametrize("pixels, dim", [(64, 8), (30, 16)])  # std from cov(x) / from x W^T
def test_words_side_equals_attention_over_normalised_pixel_values(pixels, dim):
    """L_r = W2(softmax_HW(A^T) IN(W_v x + b) * M), computed here as written (the module avoids the
    (HW, C_l) values); V_r = IN(W1(softmax_T(A) L_v))."""
    from risbench.models.lgformer import BidirectionalAttention

    torch.manual_seed(0)
    attention = BidirectionalAttention(dim, 24).double()
    x = torch.randn(2, pixels, dim, dtype=torch.float64) * 3 + 1
    words = torch.randn(2, 6, 24, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    attention.record_attention = True
    vision, text = attention(x, words, mask)
    over_words, over_pixels = attention.last_attention
    inorm = lambda t: F.instance_norm(t.transpose(1, 2)).transpose(1, 2)  # noqa: E731
    m = mask[..., None].double()
    values = inorm(attention.text_value(x))                                # (B, HW, C_l)
    # (the InstanceNorms run in fp32, as LAVT's)
    assert torch.allclose(text, attention.text_out(over_pixels @ values * m), atol=1e-7, rtol=0)
    want = inorm(attention.vision_out(over_words @ (attention.value(words) * m)))
    assert torch.allclose(vision, want, atol=1e-5, rtol=0)
    attention.record_attention = False
    fused = attention(x, words, mask)
    assert all(torch.allclose(a, b, atol=1e-10, rtol=0) for a, b in zip(fused, (vision, text)))


# --- 3. padding invariance ---

def test_padded_positions_do_not_change_the_logits():
    model = tiny()
    batch = make_batch()
    with torch.no_grad():
        reference = model(batch)["logits"]
        other_ids = dict(batch, tokens=batch["tokens"].clone())
        other_ids["tokens"][1, 7:] = torch.randint(1, VOCAB, (13,))
        assert torch.allclose(model(other_ids)["logits"], reference, atol=1e-5)
        noise = model.text.register_forward_hook(
            lambda m, a, out: (out[0] + 50 * (1 - batch["attention_mask"][..., None]) * torch.randn_like(out[0]),
                               out[1]))
        assert torch.allclose(model(batch)["logits"], reference, atol=1e-5)   # features at the pads
        noise.remove()
        changed = dict(batch, tokens=batch["tokens"].clone())
        changed["tokens"][1, 3] = (changed["tokens"][1, 3] % (VOCAB - 1)) + 1
        assert not torch.allclose(model(changed)["logits"][1], reference[1], atol=1e-4)  # real words count


# --- 4. the query ---

def test_linguistic_query_is_linear_of_the_masked_mean_and_learnable_ignores_the_text():
    model = tiny()
    batch = make_batch()
    seen: list = []
    hook = record_inputs(model.decoder.layers[0], seen)
    with torch.no_grad():
        out = model(batch)
    hook.remove()
    text = out["text"]
    by_hand = model.decoder.txt_proj(masked_mean(text, batch["attention_mask"]))[:, None]
    assert seen[0][0].shape == (2, 1, 32) and torch.allclose(seen[0][0], by_hand, atol=1e-6)
    manual = (text * batch["attention_mask"][..., None]).sum(1) / batch["attention_mask"].sum(1, keepdim=True)
    assert torch.allclose(masked_mean(text, batch["attention_mask"]), manual, atol=1e-6)

    learnable = tiny(decoder={"query_type": "learnable", "num_queries": 10})
    first: list = []
    hook = record_inputs(learnable.decoder.layers[0], first)
    other = make_batch(seed=3)
    with torch.no_grad():
        learnable(batch)
        learnable(other)
    hook.remove()
    assert first[0][0].shape == (2, 10, 32) and torch.equal(first[0][0], first[1][0])
    assert torch.equal(first[0][0][0], learnable.decoder.query_feat.weight)


# --- 5. round robin ---

@pytest.mark.parametrize("layers, expected", [(6, [4, 16, 64, 4, 16, 64]), (3, [4, 16, 64])])
def test_generator_layers_visit_the_scales_in_turn(layers, expected):
    model = tiny(decoder={"num_layers": layers})
    assert len(model.pixel_decoder.layers) == layers                    # the pixel decoder follows N
    keys: list = []
    hooks = [layer.cross_attn.register_forward_pre_hook(lambda m, args: keys.append(args[1].shape[1]))
             for layer in model.decoder.layers]
    with torch.no_grad():
        out = model(make_batch())
    for hook in hooks:
        hook.remove()
    assert keys == expected                                               # (64/32)^2, (64/16)^2, (64/8)^2
    assert out["logits"].shape[1] == layers + 1


# --- 6. ablation isolation ---

def test_without_vlba_and_v2la_the_prototypes_never_see_the_image():
    model = tiny(encoder={"fusion": "pwam"}, decoder={"v2la": False})
    assert all(layer.cross_attn is None for layer in model.decoder.layers) and len(model.encoder.text_gates) == 0
    queries: list = []
    hook = model.head.register_forward_pre_hook(lambda m, args: queries.append(args[0].detach().clone()))
    batch = make_batch()
    with torch.no_grad():
        model(batch)
        model(dict(batch, image=torch.randn_like(batch["image"])))
    hook.remove()
    assert torch.equal(queries[0], queries[1])
    full = tiny()
    queries.clear()
    hook = full.head.register_forward_pre_hook(lambda m, args: queries.append(args[0].detach().clone()))
    with torch.no_grad():
        full(batch)
        full(dict(batch, image=torch.randn_like(batch["image"])))
    hook.remove()
    assert not torch.allclose(queries[0], queries[1])


def test_sentence_l2va_has_one_key_and_no_l2va_takes_no_text():
    model = tiny(pixel_decoder={"l2va_text": "sentence"})
    assert model.pixel_decoder.key_embed is None
    keys: list = []
    hook = model.pixel_decoder.layers[0].text_attn.cross_attn.register_forward_pre_hook(
        lambda m, args: keys.append(args[1].shape))
    with torch.no_grad():
        model(make_batch(real=(12, 3)))  # the sentence token needs no fixed text length
    hook.remove()
    assert keys == [torch.Size([2, 1, 32])]
    plain = tiny(pixel_decoder={"l2va": False})
    assert plain.pixel_decoder.key_embed is None
    assert all(layer.text_attn is None for layer in plain.pixel_decoder.layers)
    stages = [torch.randn(1, d, 64 // 2 ** (s + 2), 64 // 2 ** (s + 2)) for s, d in enumerate([16, 32, 64, 128])]
    with torch.no_grad():
        a, _ = plain.pixel_decoder(stages, torch.randn(1, 20, 32), torch.ones(1, 20))
        b, _ = plain.pixel_decoder(stages, torch.randn(1, 20, 32), torch.ones(1, 20))
    assert torch.equal(a, b)                                              # the text never reaches it
    l2va = sum(p.numel() for layer in tiny().pixel_decoder.layers for p in layer.text_attn.parameters())
    assert count_params(tiny())["total"] - count_params(plain)["total"] == l2va + 20 * 32  # + the key embedding


# --- 7. the loss ---

def test_loss_is_eq_12_13_with_pos_weight_summed_over_the_seven_outputs():
    model = tiny()
    batch = make_batch()
    out = model(batch)
    target = batch["mask"]

    def bce_by_hand(logits, target, pos_weight=1.1):
        p = torch.sigmoid(logits.double())
        return -(pos_weight * target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()

    maps = F.interpolate(out["logits"], size=(64, 64), mode="bilinear", align_corners=False)
    terms = [bce_by_hand(maps[:, k:k + 1], target) for k in range(7)]
    assert math.isclose(model.loss(out, batch)["loss"].item(), sum(terms).item(), rel_tol=1e-5)
    literal = tiny(overrides=("model.loss.deep_supervision=false", "model.loss.resolution=stride4",
                              "model.loss.pos_weight=1.0"))
    literal.load_state_dict(model.state_dict())
    small = F.interpolate(target, size=(16, 16), mode="nearest")
    want = bce_by_hand(out["logits"][:, -1:], small, pos_weight=1.0)
    assert math.isclose(literal.loss(literal(batch), batch)["loss"].item(), want.item(), rel_tol=1e-5)
    with_dice = tiny(overrides=("model.loss.dice_weight=0.5",))                # the tiny recipe's extra term
    with_dice.load_state_dict(model.state_dict())
    parts = with_dice.loss(with_dice(batch), batch)
    dice = sum(dice_loss(maps[:, k:k + 1], target) for k in range(7))
    assert math.isclose(parts["dice"].item(), dice.item(), rel_tol=1e-5)
    assert math.isclose(parts["loss"].item(), sum(terms).item() + 0.5 * dice.item(), rel_tol=1e-5)


def test_loss_decreases_on_a_fixed_batch_and_every_parameter_learns():
    model = tiny().train()
    batch = make_batch()
    batch["mask"] = torch.zeros_like(batch["mask"])
    batch["mask"][..., 8:40, 16:48] = 1.0
    model.loss(model(batch), batch)["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    losses = overfit_losses(model, batch)
    assert losses[-1] < 0.7 * losses[0], losses


# --- 8. the head ---

def test_head_logits_are_f_dot_w_plus_b_and_ten_queries_merge_to_one_map():
    model = tiny()
    queries: list = []
    hook = model.head.register_forward_pre_hook(lambda m, args: queries.append(args))
    with torch.no_grad():
        out = model(make_batch())
    hook.remove()
    prototypes, features = queries[0]                                    # (B, 7, 1, C_l), (B, 32, 16, 16)
    kernel = model.head.mlp(prototypes[:, :, 0])                           # (B, 7, 33)
    by_hand = torch.einsum("bchw,bqc->bqhw", features, kernel[..., :32]) + kernel[..., 32:, None]
    assert torch.allclose(out["logits"], by_hand, atol=1e-5)
    no_bias = tiny(head={"bias": False})
    assert no_bias.head.mlp[-1].out_features == 32
    ten = tiny(decoder={"query_type": "learnable", "num_queries": 10})
    with torch.no_grad():
        logits = ten(make_batch())["logits"]
    assert logits.shape == (2, 7, 16, 16) and ten.head.merge[0].in_channels == 10


# --- 9. metrics under the paper's protocol ---

def test_metrics_oiou_miou_empty_union_prec_and_length_buckets():
    cfg = compose_config(["experiment=ablation/lgformer_table3", "+row/lgformer_table3=linguistic",
                          "table2_checkpoints.linguistic=/x"])
    protocol = Protocol.from_config(cfg.eval.paper, "eval.paper")
    assert (protocol.resolution, protocol.threshold, protocol.prec_op, protocol.empty_union_iou) == \
        ("input", 0.5, ">=", 0.0)
    buckets = OmegaConf.to_object(cfg.eval.length_buckets)
    metric = ReferringSegmentationMetrics(prec_thresholds=[0.5], length_buckets=buckets, **protocol.metric_options())
    gt = [torch.zeros(4, 4, dtype=torch.bool) for _ in range(4)]
    pred = [torch.zeros(4, 4, dtype=torch.bool) for _ in range(4)]
    gt[0][:2, :2] = True
    pred[0][:2, :1] = True            # IoU 2/4 = 0.5 exactly: counts for prec@0.5 (>=)
    gt[1][:, :] = True
    pred[1][:, :] = True              # IoU 1 on 16 pixels
    # sample 2: empty prediction and ground truth -> IoU 0; sample 3: a miss
    gt[3][0, 0] = True
    metric.update(pred, gt, torch.tensor([2, 3, 8, 13]))   # one sample per bucket [1,3) [3,8) [8,13) [13,inf)
    result = {k: float(v) for k, v in metric.compute().items()}
    assert result["oIoU"] == pytest.approx((2 + 16) / (4 + 16 + 0 + 1))
    assert result["mIoU"] == pytest.approx((0.5 + 1 + 0 + 0) / 4)
    assert result["prec@0.5"] == pytest.approx(0.5)
    assert result["len1-2/oIoU"] == pytest.approx(0.5) and result["len3-7/oIoU"] == pytest.approx(1.0)
    assert result["len8-12/mIoU"] == 0.0 and result["len13+/oIoU"] == 0.0


# --- 10. schedule and optimizer groups ---

def test_poly_schedule_and_weight_decay_groups():
    cfg = compose_config(["experiment=lgformer"])
    assert cfg.optim.optimizer.lr == 5e-5 and cfg.optim.optimizer.weight_decay == 0.01
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=5e-5)
    schedule = poly_schedule(opt, total_steps=1000, **{k: v for k, v in cfg.optim.scheduler.items()
                                                       if not k.startswith("_")})
    lrs = []
    for _ in range(1001):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[0] == 5e-5 and lrs[500] == pytest.approx(2.68e-5, abs=1e-8) and lrs[1000] == 0.0
    model = tiny(text={"trainable": "encoder"})
    groups = build_param_groups(model, 5e-5, 0.01, [], OmegaConf.to_object(cfg.optim.no_decay))
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    # the code: backbone parameters named *norm*, *relative_position_bias_table* -> wd 0, all others 0.01
    backbone = {n for n in names.values() if n.startswith("encoder.")}
    assert no_decay == {n for n in backbone if n.startswith(("encoder.swin.", "encoder.norms."))
                        and ("norm" in n or "relative_position_bias_table" in n)}
    assert {n for n in decay if n.startswith("encoder.fusions.")} == {n for n in backbone if ".fusions." in n}
    assert not any(n.startswith("text.bert.embeddings.") for n in decay | no_decay)   # out of the optimizer
    assert {int(n.split(".")[4]) for n in decay if n.startswith("text.bert.encoder.")} == {0, 1}


# --- 11. inference ---

def test_prediction_is_sigmoid_half_of_the_last_output_at_the_input():
    model = tiny()
    batch = make_batch()
    with torch.no_grad():
        out = model(batch)
    logits = model.mask_logits(out)
    want = F.interpolate(out["logits"][:, -1:], size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.equal(logits, want)
    cfg = compose_config(["model=lgformer"])
    protocol = Protocol.from_config(cfg.eval.paper, "eval.paper")
    preds, targets = protocol.scored_masks(logits, batch)
    assert preds[0].shape == (64, 64) and preds[0].dtype == torch.bool
    assert torch.equal(preds[1], torch.sigmoid(logits[1, 0]) >= 0.5)


# --- config errors and precision ---

@pytest.mark.parametrize("nodes, key", [
    ({"encoder": {"fusion": "pwa"}}, "model.encoder.fusion"),
    ({"pixel_decoder": {"l2va_text": "words"}}, "model.pixel_decoder.l2va_text"),
    ({"decoder": {"query_type": "learned"}}, "model.decoder.query_type"),
    ({"decoder": {"num_queries": 4}}, "model.decoder.num_queries"),
    ({"pixel_decoder": {"mask_features": "bilinear"}}, "model.pixel_decoder.mask_features"),
    ({"pixel_decoder": {"norm_groups": 5}}, "model.pixel_decoder.dim"),
])
def test_bad_options_are_one_clear_error(nodes, key):
    with pytest.raises(RisbenchError, match=key.replace(".", r"\.")):
        tiny(**nodes)


def test_text_length_must_match_the_key_embedding():
    model = tiny()
    with pytest.raises(RisbenchError, match=r"(?s)text_length=20.*padded to 12 tokens.*tokenizer\.max_length"):
        model(make_batch(length=12, real=(12, 5)))
    assert PixelDecoder.NUM_LEVELS == 3


def test_bf16_autocast_runs_on_cpu():
    model = tiny()
    batch = make_batch()
    out, loss = bf16_forward_and_loss(model, batch)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert torch.isfinite(model.mask_logits(out)).all()


def test_ffn_relu_works_in_place_only_outside_autograd():
    relu = InferenceInPlaceReLU()
    x = torch.randn(4, 8, requires_grad=True)
    h = x * 1.0
    out = relu(h)
    assert out.data_ptr() != h.data_ptr() and (h < 0).any()  # training: a new tensor, the input kept
    out.sum().backward()
    assert torch.equal(x.grad, (x > 0).float())
    with torch.no_grad():
        h = x * 1.0
        assert relu(h).data_ptr() == h.data_ptr() and torch.equal(h, x.detach().clamp(min=0))
