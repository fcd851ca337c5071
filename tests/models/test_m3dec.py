"""M3Dec fidelity checks (spec papers/m3dec.md §7, checks 1-12) and behaviour; no weights, no data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from risbench.errors import MissingFileError, RisbenchError
from risbench.models.common.attention import explicit_attention
from risbench.models.m3dec import DynamicKernelMaps, M3Att, M3Dec
from risbench.profiling import count_params
from risbench.tasks.common import build_net
from tests.helpers import compose_config, sweep_jobs

VOCAB = 50
C = 256  # the paper's transformer width
# towers small enough for a CPU test; the head keeps the paper's sizes
SMALL_SWIN = dict(pretrained=False, embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], drop_path_rate=0.0)
SMALL_BERT = dict(pretrained=False, num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)
SMALL_DARKNET = dict(pretrained=False, stem_channels=4, widths=[8, 8, 16, 16, 32], depths=[1, 1, 1, 1, 1])


def build(model: str = "m3dec_cnn", scale: str = "tiny", overrides=(), seed: int = 0, **nodes) -> M3Dec:
    """``model=<model>`` as its config builds it (``scale=paper``: RefCOCO's sizes, no weights), with the
    nested dicts ``nodes`` merged into its ``model:`` node."""
    data = "data=refcoco" if scale == "paper" else "data=synthref"
    cfg = compose_config([f"model={model}", f"scale={scale}", data, *overrides])
    if scale == "paper":
        weights = {"vision": {"pretrained": False}, "text": {"glove_path": None} if model == "m3dec_cnn" else
                   {"pretrained": False}}
        nodes = OmegaConf.to_container(OmegaConf.merge(weights, nodes))
    OmegaConf.set_struct(cfg, False)
    cfg = OmegaConf.merge(cfg, {"model": nodes})
    torch.manual_seed(seed)
    return build_net(cfg, VOCAB)


def on_meta(*args, **kwargs) -> M3Dec:
    """Parameter counts only: no memory, no init time."""
    with torch.device("meta"):
        return build(*args, **kwargs)


def make_batch(size: int, length: int, lengths: list[int], seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    mask = (torch.arange(length)[None] < torch.tensor(lengths)[:, None]).long()  # right padding
    gt = torch.zeros(B, 1, size, size)
    gt[..., size // 4: size // 2, size // 8: size // 2] = 1.0
    return {"image": torch.randn(B, 3, size, size, generator=g),
            "tokens": torch.randint(1, VOCAB, (B, length), generator=g) * mask, "attention_mask": mask, "mask": gt}


def tiny_batch(model: M3Dec, lengths=(12, 5), seed: int = 0) -> dict:
    return make_batch(model.img_size, model.max_length, list(lengths), seed)


def m3atts(model: M3Dec) -> list[M3Att]:
    return [layer.m3att for layer in model.decoder if layer.m3att is not None]


def capture(model: M3Dec, batch: dict) -> dict:
    """Intermediate tensors of one eval forward (explicit attention, so M3Att keeps its maps)."""
    seen = {}
    hooks = [model.neck.register_forward_hook(lambda m, a, out: seen.__setitem__("F_vis", out)),
             model.encoder[-1].register_forward_hook(lambda m, a, out: seen.__setitem__("F_enc", out)),
             model.decoder[0].m3att.register_forward_hook(lambda m, a, out: seen.__setitem__("M3Att", out)),
             model.decoder[-1].register_forward_hook(lambda m, a, out: seen.__setitem__("M3Dec", out))]
    model.decoder[0].m3att.record_attention = True
    try:
        with torch.no_grad():
            seen["logits"] = model.eval()(batch)["logits"]
    finally:
        for hook in hooks:
            hook.remove()
        model.decoder[0].m3att.record_attention = False
    seen.update(model.decoder[0].m3att.last_maps)
    return seen


# --- check 1: shapes ---

@pytest.mark.slow
def test_shapes_of_the_cnn_model_at_416_px_and_15_words():
    model = build("m3dec_cnn", "paper")
    assert (model.img_size, model.max_length) == (416, 15)
    seen = capture(model, make_batch(416, 15, [15, 6]))
    shapes = {key: tuple(value.shape) for key, value in seen.items()}
    assert shapes["F_vis"] == (2, C, 26, 26) and shapes["F_enc"] == (2, 676, C)
    assert shapes["affinity"] == (2, 8, 15, 676) and shapes["f_mul"] == (2, 15, 676)
    assert shapes["M3Att"] == shapes["M3Dec"] == (2, 15, C)
    assert shapes["logits"] == (2, 1, 208, 208)


def test_shapes_of_the_swin_variant_at_480_px_and_20_tokens():
    model = build("m3dec_swin", "paper", vision=SMALL_SWIN, text=SMALL_BERT)
    assert (model.img_size, model.max_length) == (480, 20)
    seen = capture(model, make_batch(480, 20, [20, 7]))
    assert tuple(seen["F_enc"].shape) == (2, 900, C) and tuple(seen["f_mul"].shape) == (2, 20, 900)
    assert tuple(seen["M3Dec"].shape) == (2, 20, C) and tuple(seen["logits"].shape) == (2, 1, 240, 240)


# --- check 2: softmax axes ---

def test_lav_normalises_over_pixels_and_val_over_the_real_words_only():
    model = build()
    batch = tiny_batch(model, lengths=(12, 5))
    seen = capture(model, batch)
    lav, val = seen["lav_weights"], seen["val_weights"]                   # (B,h,Nt,HW), (B,h,HW,Nt)
    assert torch.allclose(lav.sum(-1), torch.ones_like(lav.sum(-1)), atol=1e-5)
    assert torch.allclose(val.sum(-1), torch.ones_like(val.sum(-1)), atol=1e-5)
    assert torch.equal(val[1, :, :, 5:], torch.zeros_like(val[1, :, :, 5:]))  # pad words get exactly 0
    assert (val[1, :, :, :5] > 0).all() and (val[0] > 0).all()


# --- check 3: shared / independent / generic ---

def test_shared_computes_one_affinity_independent_two():
    for attention, same in (("shared", True), ("independent", False)):
        model = build(decoder={"attention": attention})
        maps = capture(model, tiny_batch(model))
        assert (maps["val_affinity"] is maps["affinity"]) == same
        if not same:
            assert not torch.allclose(maps["val_affinity"], maps["affinity"])


@pytest.mark.parametrize("layers", [1, 2, 3, 4])
def test_independent_adds_exactly_two_key_projections_per_layer(layers):
    shared = count_params(on_meta(scale="paper", decoder={"num_layers": layers, "attention": "shared"}))["total"]
    independent = count_params(on_meta(scale="paper", decoder={"num_layers": layers,
                                                                "attention": "independent"}))["total"]
    assert independent - shared == 2 * (C * C + C) * layers
    if layers == 3:
        assert independent - shared == 394_752


@pytest.mark.parametrize("attention", ["generic", "val_only"])
def test_single_modal_baselines_have_no_m3att(attention):
    model = on_meta(scale="paper", decoder={"attention": attention})
    assert not m3atts(model)
    hw_wide = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear) and m.in_features == 676]
    assert not hw_wide


@pytest.mark.parametrize("attention", ["shared", "independent", "generic", "val_only"])
def test_fused_and_explicit_attention_agree(attention):
    model = build(decoder={"attention": attention}).eval()
    batch = tiny_batch(model)
    with torch.no_grad():
        fused = model(batch)["logits"]
        with explicit_attention(model):
            explicit = model(batch)["logits"]
    assert torch.allclose(fused, explicit, atol=1e-4)


# --- checks 4, 5: the image size and the text length are part of the architecture ---

def test_m3att_out_projection_is_hw_wide_and_the_first_mask_conv_nt_wide():
    cnn = on_meta(scale="paper")
    assert {m.out.in_features for m in m3atts(cnn)} == {26 * 26}
    assert cnn.mask_decoder.upsample[1][0].in_channels == 15
    gref = on_meta(scale="paper", overrides=["data=refcocog_umd"])
    assert gref.max_length == 20 and gref.mask_decoder.upsample[1][0].in_channels == 20
    swin = on_meta("m3dec_swin", "paper", vision=SMALL_SWIN, text=SMALL_BERT)
    assert {m.out.in_features for m in m3atts(swin)} == {30 * 30}
    assert swin.mask_decoder.upsample[1][0].in_channels == 20


def test_mismatched_image_sizes_fail_at_build_time_naming_both():
    with pytest.raises(RisbenchError, match=r"model.vision.img_size=448 but model.img_size=480"):
        on_meta("m3dec_swin", "paper", vision={**SMALL_SWIN, "img_size": 448}, text=SMALL_BERT)
    with pytest.raises(RisbenchError, match="divisible by 32.*data.img_size=400"):
        on_meta(scale="paper", overrides=["data.img_size=400"])


def test_a_batch_of_another_size_or_length_fails_naming_the_keys():
    model = build().eval()
    batch = tiny_batch(model)
    wrong_size = {**batch, "image": torch.randn(2, 3, 128, 128)}
    with pytest.raises(RisbenchError, match=r"images are 128 px \(data.img_size\).*model.img_size=96"):
        model(wrong_size)
    wrong_length = {**batch, "tokens": batch["tokens"][:, :10], "attention_mask": batch["attention_mask"][:, :10]}
    with pytest.raises(RisbenchError, match=r"padded to 10 \(tokenizer.max_length\).*model.max_length=12"):
        model(wrong_length)


# --- check 6: IMI ---

@pytest.mark.parametrize("layers, blocks", [(1, 0), (3, 2), (4, 3)])
def test_one_imi_block_between_each_two_decoder_layers(layers, blocks):
    model = on_meta(scale="paper", decoder={"num_layers": layers})
    assert (len(model.imi) if model.imi is not None else 0) == blocks
    if blocks:
        assert all(block.gate.dim() == 0 and block.gate.requires_grad for block in model.imi)
    after = on_meta(scale="paper", decoder={"num_layers": layers}, imi={"after_last_layer": True})
    assert len(after.imi) == layers


def test_imi_disabled_has_no_parameters_and_static_only_the_gate_and_bn():
    assert build(imi={"enabled": False}).imi is None
    assert not [n for n, _ in build(imi={"enabled": False}).named_parameters() if n.startswith("imi.")]
    static = build(imi={"mode": "static"})
    names = {n.split(".", 2)[2] for n, _ in static.named_parameters() if n.startswith("imi.")}
    assert names == {"gate", "norm.weight", "norm.bias"}


def test_imi_gate_scales_the_injected_language():
    model = build().eval()
    batch = tiny_batch(model)
    with torch.no_grad():
        with_gate = model(batch)["logits"]
        for block in model.imi:
            block.gate.zero_()
        without = model(batch)["logits"]
    assert not torch.allclose(with_gate, without)


# --- checks 7, 8: LFR and the loss ---

def test_lfr_disabled_has_no_parameters_and_a_zero_loss():
    model = build(lfr={"enabled": False}, loss={"dice_weight": 0.0}).train()
    assert model.lfr is None and not [n for n, _ in model.named_parameters() if n.startswith("lfr.")]
    batch = tiny_batch(model)
    losses = model.loss(model(batch), batch)
    assert losses["lfr_mse"].item() == 0.0 and torch.equal(losses["loss"], losses["mask_bce"])


def test_lfr_weights_do_not_change_the_evaluation_logits():
    model = build().eval()
    batch = tiny_batch(model)
    with torch.no_grad():
        before = model(batch)
        for p in model.lfr.parameters():
            p.add_(torch.randn_like(p))
        after = model(batch)
    assert "lfr" not in before and torch.equal(before["logits"], after["logits"])


@pytest.mark.parametrize("detach_target", [False, True])
def test_lfr_loss_reaches_every_real_word(detach_target):
    model = build(lfr={"detach_target": detach_target}).train()
    batch = tiny_batch(model)
    kept = {}

    def keep(module, args, out):
        out[0].retain_grad()
        kept["words"] = out[0]

    model.text.register_forward_hook(keep)
    model.loss(model(batch), batch)["lfr_mse"].backward()
    per_word = kept["words"].grad.abs().sum(-1)                    # (B, T)
    # padded rows get some too: TokenBatchNorm's training statistics include them (as the reference code)
    assert bool((per_word[batch["attention_mask"].bool()] > 0).all())
    # W_proj learns only from an attached target (model.lfr.detach_target=false, the paper)
    project_grad = model.lfr.project.weight.grad
    assert (project_grad is None) == detach_target


def test_total_loss_is_mask_bce_plus_a_tenth_of_the_reconstruction_mse():
    model = build(loss={"dice_weight": 0.0}).train()
    batch = tiny_batch(model)
    outputs = model(batch)
    losses = model.loss(outputs, batch)
    logits = outputs["logits"]
    target = F.interpolate(batch["mask"], size=logits.shape[-2:], mode="nearest")
    p = torch.sigmoid(logits)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    rec, proj = outputs["lfr"]
    mse = ((rec - proj) ** 2).mean()
    assert torch.allclose(losses["loss"], 1.0 * bce + 0.1 * mse, atol=1e-5)
    summed = build(loss={"dice_weight": 0.0, "mask_reduction": "sum"}).loss(outputs, batch)
    assert torch.allclose(summed["mask_bce"], losses["mask_bce"] * logits.shape[-1] * logits.shape[-2])


# --- check 9: padded word slots ---

@pytest.mark.parametrize("model_name", ["m3dec_cnn", "m3dec_swin"])
@pytest.mark.parametrize("mask_decoder", ["dynamic_kernel", "concat", "vlt"])
def test_word_features_in_padded_slots_leave_the_logits_bit_identical(model_name, mask_decoder):
    model = build(model_name, mask_decoder={"type": mask_decoder}).eval()
    batch = tiny_batch(model, lengths=(model.max_length, 5))
    noise = torch.randn(2, model.max_length, model.text.out_dim)

    def perturb(where):
        def hook(module, args, out):
            words = out[0].clone()
            words[where] += noise[where]
            return words, out[1]
        return hook

    with torch.no_grad():
        clean = model(batch)["logits"]
        pads = batch["attention_mask"] == 0
        handle = model.text.register_forward_hook(perturb(pads))
        padded = model(batch)["logits"]
        handle.remove()
        real = torch.zeros_like(pads)
        real[1, 2] = True
        handle = model.text.register_forward_hook(perturb(real))
        changed = model(batch)["logits"]
        handle.remove()
    assert torch.equal(clean, padded)
    assert not torch.allclose(clean[1], changed[1])


# --- check 10: dynamic kernels ---

def test_dynamic_kernel_einsum_equals_a_per_sample_1x1_conv():
    g = torch.Generator().manual_seed(0)
    kernels, f_enc = torch.randn(3, 15, 32, generator=g), torch.randn(3, 32, 7, 9, generator=g)
    maps = DynamicKernelMaps()(kernels, f_enc)
    for b in range(3):
        conv = F.conv2d(f_enc[b:b + 1], kernels[b][:, :, None, None])     # 15 filters of 32 -> (1,15,7,9)
        assert torch.allclose(maps[b:b + 1], conv, atol=1e-5)


# --- check 11: head parameters ---

def test_head_parameters_match_the_specs_reference_counts():
    model = on_meta(scale="paper")
    parts = {name: count_params(getattr(model, name))["total"]
             for name in ("encoder", "decoder", "imi", "lfr", "mask_decoder")}
    assert parts == {"encoder": 1_579_520, "decoder": 4_471_296, "imi": 398_850, "lfr": 264_192,
                     "mask_decoder": 799_233}
    assert sum(parts.values()) == 7_513_091
    assert count_params(m3atts(model)[0])["total"] == 436_992
    assert count_params(model.text.rnn)["total"] == 857_088


# --- check 12: Table I as a multirun ---

def test_table1_multirun_composes_twelve_distinct_valid_models():
    jobs = sweep_jobs("ablation/m3dec_table1")
    seen = set()
    for job in jobs:
        cfg = compose_config(["experiment=ablation/m3dec_table1", "scale=tiny", "data=synthref", *job])
        layers, attention = cfg.model.decoder.num_layers, cfg.model.decoder.attention
        assert cfg.model.imi.enabled and cfg.model.lfr.enabled
        net = build_net(cfg, VOCAB)
        assert len(net.decoder) == layers and {layer.attention for layer in net.decoder} == {attention}
        seen.add((layers, attention))
    assert seen == {(n, a) for n in (1, 2, 3, 4) for a in ("shared", "independent", "generic")}


# --- options and their errors ---

@pytest.mark.parametrize("node, key", [({"decoder": {"attention": "mutual"}}, "decoder.attention"),
                                       ({"mask_decoder": {"type": "fpn"}}, "mask_decoder.type"),
                                       ({"imi": {"mode": "fixed"}}, "imi.mode"),
                                       ({"loss": {"mask_reduction": "max"}}, "loss.mask_reduction"),
                                       ({"sentence": "cls"}, "sentence")])
def test_unknown_options_name_their_key(node, key):
    with pytest.raises(RisbenchError, match=key.replace(".", r"\.")):
        build(**node)


def test_text_width_must_match_or_be_projected():
    with pytest.raises(RisbenchError, match="model.text_proj=true"):
        build(text={"hidden_size": 32})
    model = build("m3dec_swin").eval()
    batch = tiny_batch(model)
    words, sentence = model.encode_text(batch["tokens"], batch["attention_mask"])
    assert words.shape[-1] == 64 and torch.equal(sentence, words[:, 0])  # F'_t = the projected [CLS]


@pytest.mark.parametrize("mask_decoder", ["concat", "vlt"])
def test_table3_heads_produce_stride_2_logits(mask_decoder):
    model = build(mask_decoder={"type": mask_decoder}).train()
    batch = tiny_batch(model)
    outputs = model(batch)
    assert tuple(model.mask_logits(outputs).shape) == (2, 1, 48, 48)
    model.loss(outputs, batch)["loss"].backward()


def test_pretrained_parts_come_from_local_files(tmp_path):
    model = build(vision={**SMALL_DARKNET, "pretrained": True,
                          "checkpoint": str(tmp_path / "darknet53.c2ns_in1k.safetensors")})
    with pytest.raises(MissingFileError, match="model.vision.checkpoint"):
        model.load_pretrained()
