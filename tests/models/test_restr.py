"""ReSTR fidelity (spec papers/restr.md section 7) and behaviour; no pretrained weights needed."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from risbench.errors import MissingFileError, RisbenchError
from risbench.models.common.attention import explicit_attention
from risbench.models.common.text.glove import GloveTransformer, init_from_word_vectors, load_word_vectors
from risbench.models.common.vision.vit import build_vit
from risbench.models.restr import FusionEncoder, ReSTR, patch_labels, seed_attention_analysis
from risbench.profiling import count_macs, count_params
from tests.helpers import build_model

GLOVE = ("text.embed.",)  # the paper's parameter counts exclude the word-embedding table
FULL = dict(vision=dict(pretrained=False))
# same architecture at toy widths: 32 px, 8 px patches -> 4x4 grid, 3 decoder blocks
TINY = dict(img_size=32,
            vision=dict(timm_name=None, arch=dict(patch_size=8, embed_dim=32, depth=2, num_heads=2),
                        pretrained=False, drop_path_rate=0.0),
            text=dict(dim=24, depth=1, num_heads=2, mlp_dim=48, glove_path=None),
            fusion=dict(dim=32, num_heads=2, mlp_dim=64, drop_path_rate=0.0))
ONE_BLOCK = 7_087_872


def restr(vocab_size: int = 100, **nodes) -> ReSTR:
    """ReSTR as conf/model/restr.yaml builds it, with ``nodes`` merged into its config."""
    return build_model("restr", vocab_size, **nodes).eval()


def tiny(vocab_size: int = 50, **overrides) -> ReSTR:
    cfg = {key: dict(value) if isinstance(value, dict) else value for key, value in TINY.items()}
    for key, value in overrides.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    torch.manual_seed(0)
    return restr(vocab_size, **cfg)


def make_batch(batch_size: int, size: int, num_words: int = 6, length: int = 20, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(batch_size, length, dtype=torch.long)
    tokens[:, length - num_words:] = torch.randint(1, 50, (batch_size, num_words), generator=g)  # left padding
    return {"image": torch.randn(batch_size, 3, size, size, generator=g), "tokens": tokens,
            "attention_mask": (tokens != 0).long(),
            "mask": (torch.rand(batch_size, 1, size, size, generator=g) > 0.7).float()}


def params(module: torch.nn.Module, exclude: tuple[str, ...] = GLOVE) -> int:
    return count_params(module, exclude)["total"]


def full_fusion(kind: str, shared: bool = False) -> FusionEncoder:
    """The paper-size fusion encoder (4 layers), built alone: Table 3b counts only its stacks."""
    return FusionEncoder(768, 300, type=kind, num_layers=4, weight_sharing=shared, dim=768, num_heads=12,
                         mlp_dim=3072, drop_path_rate=0.1, input_norm="l2", vl_output_norm=True).eval()


def fusion_stack_params(fusion: FusionEncoder) -> int:
    """Fusion transformer layers only (blocks + stack LNs), no projections or seed."""
    return sum(params(stack, ()) for name, stack in fusion.named_children() if name in ("vl", "ls", "joint"))


@pytest.fixture(scope="module")
def cme() -> ReSTR:
    torch.manual_seed(0)
    return restr(**FULL)


@pytest.fixture(scope="module")
def cme_shared() -> ReSTR:
    return restr(vision=dict(pretrained=False), fusion=dict(weight_sharing=True))


# --------------------------------------------------------------------------------------- parameters

def test_full_size_parameter_budget(cme, cme_shared):
    assert params(cme) == 123_587_232
    assert params(cme) == pytest.approx(122.87e6, rel=0.015)
    assert params(cme_shared) == pytest.approx(108.70e6, rel=0.015)
    assert params(cme) - params(cme_shared) == 14_175_744 == 2 * ONE_BLOCK
    assert params(cme.vision) == 86_339_328
    assert params(cme.text, ("embed.",)) == 6_504_000
    assert params(cme.decoder) == 1_566_816 and len(cme.decoder.blocks) == 4
    assert params(cme.fusion.proj_v) + params(cme.fusion.proj_l) == 821_760
    assert params(cme.fusion.vl.blocks[0]) == ONE_BLOCK


@pytest.mark.parametrize("kind, shared, expected", [("vme", False, 28.35e6), ("ime", False, 28.35e6),
                                                    ("cme", False, 28.35e6), ("cme", True, 14.18e6)])
def test_fusion_stack_params_match_table3b(kind, shared, expected):
    assert round(fusion_stack_params(full_fusion(kind, shared)) / 1e4) == round(expected / 1e4)


def test_paper_text_language_mlp_width_gives_130m():
    # spec 6.1: the paper's 3072-wide language MLP would make the model 130.34M (+6.1%)
    wide = GloveTransformer(10, 300, 6, 12, 3072, True, 20, "zero")
    assert 123_587_232 - 6_504_000 + params(wide, ("embed.",)) == pytest.approx(130.34e6, abs=0.01e6)


# ------------------------------------------------------------------------------------------ sharing

@pytest.mark.parametrize("layers", [2, 4, 6])
def test_weight_sharing_runs_one_block_half_the_layers(layers):
    model = tiny(fusion=dict(num_layers=layers, weight_sharing=True))
    assert len(model.fusion.vl.blocks) == len(model.fusion.ls.blocks) == 1
    calls = {"vl": 0, "ls": 0}
    for name in calls:
        getattr(model.fusion, name).blocks[0].register_forward_hook(
            lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    model(make_batch(1, 32))
    assert calls == {"vl": layers // 2, "ls": layers // 2}
    assert params(model) == params(tiny(fusion=dict(num_layers=2, weight_sharing=True)))


def test_unshared_stacks_hold_distinct_blocks_and_nothing_is_aliased():
    model = tiny(fusion=dict(num_layers=6))
    assert len(model.fusion.vl.blocks) == len(model.fusion.ls.blocks) == 3
    pointers = [p.data_ptr() for p in model.parameters()]
    assert len(pointers) == len(set(pointers))
    vme = tiny(fusion=dict(type="vme", num_layers=3, weight_sharing=True))
    calls = []
    vme.fusion.joint.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    vme(make_batch(1, 32))
    assert len(calls) == 3


def test_odd_layer_count_rejected_for_two_stack_forms():
    with pytest.raises(RisbenchError, match="even"):
        tiny(fusion=dict(num_layers=3))


# ------------------------------------------------------------------------------------------- shapes

@pytest.mark.slow
def test_shapes_at_480(cme):
    batch = make_batch(2, 480)
    seen = {}
    # each block ends in its activation, whichever order the convolution and the upsample run in
    hooks = [block[-1].register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, tuple(o.shape[1:])))
             for k, block in enumerate(cme.decoder.blocks)]
    with torch.no_grad():
        zv = cme.encode_image(batch["image"])
        zl, _ = cme.text(batch["tokens"], batch["attention_mask"])
        _, zv_fused, classifier = cme.fusion(zv, zl, batch["attention_mask"] == 0)
        out = cme(batch)
    for hook in hooks:
        hook.remove()
    assert zv.shape == (2, 900, 768) and zl.shape == (2, 20, 300)
    assert zv_fused.shape == (2, 900, 768) and classifier.shape == (2, 1, 768)
    assert out["patch_logits"].shape == (2, 1, 30, 30)
    assert out["pixel_logits"].shape == (2, 1, 480, 480)
    assert cme.mask_logits(out) is out["pixel_logits"]
    assert seen == {0: (768, 60, 60), 1: (384, 120, 120), 2: (192, 240, 240), 3: (96, 480, 480)}


def test_shapes_at_320():
    model = restr(img_size=320, **FULL)
    with torch.no_grad():
        out = model(make_batch(2, 320))
    assert out["patch_logits"].shape == (2, 1, 20, 20)
    assert out["pixel_logits"].shape == (2, 1, 320, 320)
    assert out["classifier"].shape == (2, 1, 768)


# ----------------------------------------------------------------------------------------- info flow

@pytest.mark.parametrize("kind, sees_image", [("ime", False), ("cme", True), ("vme", True)])
def test_classifier_depends_on_the_image_except_in_ime(kind, sees_image):
    model = tiny(fusion=dict(type=kind))
    first, second = make_batch(1, 32, seed=0), make_batch(1, 32, seed=1)
    second["tokens"], second["attention_mask"] = first["tokens"], first["attention_mask"]  # same text
    with torch.no_grad():
        a, b = model(first)["classifier"], model(second)["classifier"]
    assert torch.allclose(a, b, atol=1e-6) is not sees_image
    # equivalently: the gradient of e'_s with respect to the projected patches
    zv = model.encode_image(first["image"]).detach().requires_grad_(True)
    zl, _ = model.text(first["tokens"], first["attention_mask"])
    _, _, classifier = model.fusion(zv, zl, first["attention_mask"] == 0)
    # a random direction: the plain sum of a LayerNorm output is constant, its gradient only rounding noise
    direction = torch.randn(classifier.shape, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((classifier * direction).sum(), zv, allow_unused=True)
    assert (grad is not None and bool(grad.abs().max() > 0)) is sees_image


# --------------------------------------------------------------------------------------------- MACs

def test_full_model_macs_at_320_match_table5():
    model = restr(img_size=320, decoder=dict(conv_before_upsample=False), **FULL).train()
    total, per_module = count_macs(model, make_batch(1, 320))
    assert total == pytest.approx(52.29e9, rel=0.02)
    assert set(per_module) >= {"vision", "text", "fusion", "head", "decoder"}
    # the default order mixes channels at the lower resolution: a quarter of the decoder's MACs
    fast = restr(img_size=320, **FULL)
    assert count_macs(fast, make_batch(1, 320))[1]["decoder"] == pytest.approx(per_module["decoder"] / 4, rel=0.01)


def test_channel_mixing_before_upsampling_gives_the_papers_output():
    batch = make_batch(2, 32)
    paper = tiny(decoder=dict(conv_before_upsample=False))
    fast = tiny()
    fast.load_state_dict(paper.state_dict())
    with torch.no_grad():
        assert torch.allclose(fast(batch)["pixel_logits"], paper(batch)["pixel_logits"], atol=1e-5)


def fusion_stack_macs(kind: str, shared: bool = False) -> float:
    """MACs of the fusion stacks alone at 480 px (Nv = 900, Nl = 20)."""
    fusion = full_fusion(kind, shared)
    zv, zl = torch.randn(1, 900, 768), torch.randn(1, 20, 300)
    counter = FlopCounterMode(display=False, depth=2)
    with torch.no_grad(), explicit_attention(fusion), counter:
        fusion(zv, zl, torch.zeros(1, 20, dtype=torch.bool))
    counts = counter.get_flop_counts()
    return sum(sum(counts[f"FusionEncoder.{name}"].values()) for name in ("vl", "ls", "joint")
               if f"FusionEncoder.{name}" in counts) / 2


def test_fusion_stack_macs_match_table3b():
    cme = fusion_stack_macs("cme")
    assert cme == pytest.approx(15.96e9, rel=0.02)
    assert fusion_stack_macs("vme") == pytest.approx(31.36e9, rel=0.02)
    assert fusion_stack_macs("cme", shared=True) == cme == fusion_stack_macs("ime")


# -------------------------------------------------------------------------------------- loss, labels

def test_vit_runs_once_per_distinct_image_outside_training():
    model = tiny()
    batch = make_batch(5, 32)
    batch["image"][1] = batch["image"][0]
    batch["image"][2] = batch["image"][0]
    batch["image"][4] = batch["image"][3] + 1  # same id, other pixels (an augmentation): not shared
    batch["image_id"] = [7, 7, 7, 9, 9]
    seen = []
    model.vision.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    with torch.no_grad():
        shared = model(batch)["pixel_logits"]
        separate = model({k: v for k, v in batch.items() if k != "image_id"})["pixel_logits"]
        model.train()
        model(batch)
    assert seen == [3, 5, 5]
    torch.testing.assert_close(shared, separate)


def test_patch_label_rules():
    mask = torch.zeros(3, 1, 16, 16)
    mask[0].view(-1)[:204] = 1
    mask[1].view(-1)[:205] = 1
    mask[2, 0, 5, 5] = 1
    assert patch_labels(mask, 16, 0.8, "mean").flatten().tolist() == [0, 1, 0]
    assert patch_labels(mask, 16, 0.8, "any").flatten().tolist() == [0 + 1, 1, 1]
    assert patch_labels(torch.zeros(1, 1, 480, 480), 16).shape == (1, 1, 30, 30)


@pytest.mark.parametrize("rule", ["mean", "any"])
def test_loss_is_pixel_bce_plus_weighted_patch_bce(rule):
    model = tiny(loss=dict(patch_label_rule=rule))
    batch = make_batch(2, 32)
    out = model(batch)
    losses = model.loss(out, batch)
    pixel = F.binary_cross_entropy_with_logits(out["pixel_logits"], batch["mask"])
    labels = patch_labels(batch["mask"], 8, 0.8, rule)
    patch = F.binary_cross_entropy_with_logits(out["patch_logits"], labels)
    assert torch.allclose(losses["pixel_bce"], pixel) and torch.allclose(losses["patch_bce"], patch)
    assert torch.allclose(losses["loss"], pixel + 0.1 * patch)


def test_dice_weight_adds_soft_dice_of_the_pixel_logits():
    model = tiny(loss=dict(dice_weight=0.5))
    batch = make_batch(2, 32)
    out = model(batch)
    losses = model.loss(out, batch)
    probs = out["pixel_logits"].sigmoid()
    inter, total = (probs * batch["mask"]).sum((2, 3)), (probs + batch["mask"]).sum((2, 3))
    dice = (1 - (2 * inter + 1) / (total + 1)).mean()
    assert torch.allclose(losses["pixel_dice"], dice)
    assert torch.allclose(losses["loss"], losses["pixel_bce"] + 0.5 * dice + 0.1 * losses["patch_bce"])
    assert "pixel_dice" not in tiny().loss(out, batch)  # the paper's loss by default


def test_decoder_off_upsamples_patch_logits_and_drops_the_patch_loss():
    model = tiny(decoder=dict(enabled=False))
    assert model.decoder is None and model.patch_weight == 0.0
    batch = make_batch(2, 32)
    out = model(batch)
    upsampled = F.interpolate(out["patch_logits"], size=(32, 32), mode="bilinear", align_corners=True)
    assert torch.equal(out["pixel_logits"], upsampled)
    losses = model.loss(out, batch)
    assert set(losses) == {"loss", "pixel_bce"}
    assert torch.allclose(losses["loss"], F.binary_cross_entropy_with_logits(upsampled, batch["mask"]))


# --------------------------------------------------------------------------------------------- knobs

def test_code_variant_knobs_change_the_computation():
    batch = make_batch(2, 32)
    base = tiny()
    reference = base(batch)["pixel_logits"]
    code = tiny(head=dict(extra_proj=True, logit_scale="none"),
                decoder=dict(mask_with="logits", visual_skip="projected"), fusion=dict(vl_output_norm=False),
                text=dict(norm_first=False))
    assert params(code) - params(base) == 2 * 32 * 32 - 2 * 32  # + proj_patch, proj_cls; - the VL stack LN
    for overrides in (dict(fusion=dict(input_norm="layernorm")), dict(fusion=dict(input_norm="none")),
                      dict(text=dict(pad_mode="mask")), dict(decoder=dict(mask_with="logits"))):
        out = tiny(**overrides)(batch)["pixel_logits"]
        assert out.shape == reference.shape and not torch.allclose(out, reference)
    with pytest.raises(RisbenchError, match="fusion.type"):
        tiny(fusion=dict(type="xme"))
    with pytest.raises(RisbenchError, match="enable"):
        tiny(head=dict(enable=False))


def test_pad_mode_mask_hides_padding_from_attention():
    batch = make_batch(1, 32, num_words=4)
    for mode, hidden in (("mask", True), ("zero", False)):
        model = tiny(text=dict(pad_mode=mode))
        attn = model.fusion.ls.blocks[0].attn
        attn.record_attention = True
        model(batch)
        seed_row = attn.last_attention[0, :, -1]  # (heads, 20 words + seed)
        assert bool(seed_row[:, :16].abs().sum() == 0) is hidden


def test_bf16_autocast_forward_and_loss():
    model = tiny()
    batch = make_batch(2, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
        losses = model.loss(out, batch)
    assert out["pixel_logits"].shape == (2, 1, 32, 32) and torch.isfinite(losses["loss"])


# ------------------------------------------------------------------------------------ seed attention

def test_seed_attention_analysis_on_vme():
    model = tiny(fusion=dict(type="vme", num_layers=4, weight_sharing=True))
    batches = [make_batch(3, 32, seed=s) for s in range(2)]
    result = seed_attention_analysis(model, batches, max_samples=4)
    assert result["num_samples"] == 4 and [row["layer"] for row in result["layers"]] == ["f1", "f2", "f3", "f4"]
    for row in result["layers"]:
        assert row["a_v"] + row["a_l"] + row["a_seed"] == pytest.approx(100.0, abs=1e-3)
        assert 0 < row["a_v"] < 100 and 0 < row["a_l"] < 100
    assert not model.fusion.joint.blocks[0].attn.record_attention  # switched back off
    with pytest.raises(RisbenchError, match="vme"):
        seed_attention_analysis(tiny(), batches)


# ------------------------------------------------------------------------------------ pretrained ViT

TINY_VIT = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)


def source_vit():
    """A "pretrained" ViT at another resolution (48 px: 6x6 grid) with a classification head."""
    torch.manual_seed(1)
    vit = build_vit(None, 48, 0.0, {**TINY_VIT, "num_classes": 10})
    return vit


def to_official_npz(vit, path):
    """The official Google ViT .npz layout (the inverse of timm's `_load_weights`)."""
    sd = {k: v.detach().numpy() for k, v in vit.state_dict().items()}
    D, heads = vit.embed_dim, vit.blocks[0].attn.num_heads
    out = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
           "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
           "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
           "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
           "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    for i in range(len(vit.blocks)):
        p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        out[p + "LayerNorm_0/scale"], out[p + "LayerNorm_0/bias"] = sd[b + "norm1.weight"], sd[b + "norm1.bias"]
        out[p + "LayerNorm_2/scale"], out[p + "LayerNorm_2/bias"] = sd[b + "norm2.weight"], sd[b + "norm2.bias"]
        for j, name in enumerate(("query", "key", "value")):
            w = sd[b + "attn.qkv.weight"][j * D:(j + 1) * D]
            out[p + f"MultiHeadDotProductAttention_1/{name}/kernel"] = w.T.reshape(D, heads, D // heads)
            out[p + f"MultiHeadDotProductAttention_1/{name}/bias"] = \
                sd[b + "attn.qkv.bias"][j * D:(j + 1) * D].reshape(heads, D // heads)
        out[p + "MultiHeadDotProductAttention_1/out/kernel"] = \
            sd[b + "attn.proj.weight"].reshape(D, heads, D // heads).transpose(1, 2, 0)
        out[p + "MultiHeadDotProductAttention_1/out/bias"] = sd[b + "attn.proj.bias"]
        for r in range(2):
            out[p + f"MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            out[p + f"MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    np.savez(path, **out)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz"])
def test_vit_checkpoint_loads_with_resampled_position_embeddings(tmp_path, suffix):
    vit = source_vit()
    path = tmp_path / f"vit{suffix}"
    if suffix == ".npz":
        to_official_npz(vit, path)
    elif suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(vit.state_dict(), str(path))
    else:
        torch.save({"model": vit.state_dict()}, path)
    model = tiny(vision=dict(pretrained=True, checkpoint=str(path)))
    before = model.vision.pos_embed.clone()
    model.load_pretrained()
    loaded = model.vision
    assert loaded.pos_embed.shape == (1, 1 + 16, 32) and not torch.equal(loaded.pos_embed, before)
    assert torch.allclose(loaded.pos_embed[:, 0], vit.pos_embed[:, 0])  # the CLS position is kept
    for name, tensor in vit.state_dict().items():
        if name.startswith(("blocks.", "patch_embed.", "cls_token", "norm.")):
            assert torch.allclose(loaded.state_dict()[name], tensor, atol=1e-6), name
    # the resampled grid is a smooth resize of the source grid: same mean, finite
    assert torch.allclose(loaded.pos_embed[:, 1:].mean(), vit.pos_embed[:, 1:].mean(), atol=0.05)


def test_vit_checkpoint_of_another_architecture_is_rejected(tmp_path):
    other = build_vit(None, 32, 0.0, dict(TINY_VIT, depth=3))
    torch.save(other.state_dict(), tmp_path / "vit.pth")
    model = tiny(vision=dict(pretrained=True, checkpoint=str(tmp_path / "vit.pth")))
    with pytest.raises(RisbenchError, match="does not match"):
        model.load_pretrained()


def test_missing_vit_checkpoint_says_what_to_download(tmp_path):
    model = restr(10, img_size=64, vision=dict(checkpoint=str(tmp_path / "vit.safetensors")),
                  decoder=dict(enabled=False), text=dict(glove_path=None))
    with pytest.raises(MissingFileError) as info:
        model.load_pretrained()
    message = str(info.value)
    assert "vit_base_patch16_384.augreg_in21k_ft_in1k" in message and str(tmp_path / "vit.safetensors") in message
    assert "pretrained=false" in message
    tiny().load_pretrained()  # pretrained=false and no GloVe: nothing to load, no error


# ---------------------------------------------------------------------------------------------- GloVe

def test_glove_text_file_initialises_the_table(tmp_path):
    words = ["<pad>", "<unk>", "man", "left", "zebra"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    (tmp_path / "glove.txt").write_text("man 1 2 3\nLeft 4 5 6\nleft 7 8 9\n. . . 0 0 1\nthe 0 0 0\n")
    model = tiny(vocab_size=5, text=dict(dim=3, num_heads=1, mlp_dim=6, glove_path=str(tmp_path / "glove.txt"),
                           vocab_path=str(tmp_path / "vocab.txt")))
    model.load_pretrained()
    table = model.text.embed.weight
    assert table[0].abs().sum() == 0  # <pad>
    assert table[2].tolist() == [1, 2, 3] and table[3].tolist() == [7, 8, 9]  # exact case wins
    assert 0 < table[4].abs().sum() and table[4].abs().max() < 1  # OOV ~ N(0, 0.1)


def test_glove_npy_matrix_with_and_without_its_own_words(tmp_path):
    words = ["<pad>", "a", "b"]
    (tmp_path / "vocab.txt").write_text("<pad>\na\nb\n<unk>\n")
    aligned = np.arange(9, dtype=np.float32).reshape(3, 3)
    np.save(tmp_path / "aligned.npy", aligned)
    vectors, found = load_word_vectors(tmp_path / "aligned.npy", words, 3)
    assert torch.equal(vectors, torch.from_numpy(aligned)) and found.all()
    np.save(tmp_path / "own.npy", np.array([[5, 5, 5], [1, 1, 1]], dtype=np.float32))
    (tmp_path / "own_words.txt").write_text("b\nz\n")
    embed = torch.nn.Embedding(4, 3, padding_idx=0)
    share = init_from_word_vectors(embed, tmp_path / "own.npy", tmp_path / "vocab.txt", tmp_path / "own_words.txt")
    assert share == pytest.approx(1 / 4) and embed.weight[2].tolist() == [5, 5, 5] and embed.weight[0].abs().sum() == 0
    with pytest.raises(RisbenchError, match="rows"):
        load_word_vectors(tmp_path / "own.npy", words, 3)
    with pytest.raises(MissingFileError, match="glove"):
        load_word_vectors(tmp_path / "missing.txt", words, 3)


@pytest.mark.parametrize("name, content, message", [
    ("glove.50d.txt", "a 1 2\nb 3 4\n", "no line holds a word and 3 numbers"),  # another width
    ("glove.txt", "a 1 2 x\n", "line 1: 'a' is not followed by 3 numbers"),
    ("other.txt", "dog 1 2 3\n", "share no word"),
    ("pickled.npy", None, "holds pickled objects"),
    ("broken.npy", b"not a matrix", "could not be read as a .npy matrix"),
    ("short.npy", np.ones((1, 3), dtype=np.float32), "2 lines: one word per row"),
])
def test_word_vectors_that_do_not_fit_the_table_are_refused(tmp_path, name, content, message):
    (tmp_path / "vocab.txt").write_text("<pad>\na\nb\n<unk>\n")
    (tmp_path / "own_words.txt").write_text("a\nb\n")
    path = tmp_path / name
    if content is None:  # a pickle inside: it must be refused, never run
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    else:
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    embed = torch.nn.Embedding(4, 3, padding_idx=0)
    with pytest.raises(RisbenchError, match=re.escape(message)):
        init_from_word_vectors(embed, path, tmp_path / "vocab.txt", tmp_path / "own_words.txt" if name == "short.npy" else None)
