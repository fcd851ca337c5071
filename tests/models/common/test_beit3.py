"""BEiT-3: torchscale's state-dict layout and outputs, multiway routing, release-checkpoint loading."""

from __future__ import annotations

import argparse
import importlib.util
import warnings

import pytest
import torch

from risbench.errors import MissingFileError, RisbenchError
from risbench.models.common.attention import explicit_attention
from risbench.models.common.beit3 import BEiT3, checkpoint_filter_fn, resample_vision_positions

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_dim=128, vocab_size=100,
            max_text_positions=24)
HAS_TORCHSCALE = importlib.util.find_spec("torchscale") is not None and importlib.util.find_spec("fairscale") is not None


def tiny(**overrides) -> BEiT3:
    torch.manual_seed(0)
    return BEiT3(**{**TINY, **overrides}).eval()


def inputs(batch: int = 2, length: int = 7, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, 32, 32, generator=generator)
    tokens = torch.randint(4, 100, (batch, length), generator=generator)
    padding = torch.zeros(batch, length, dtype=torch.bool)
    padding[1, 4:] = True  # the second expression has 4 real tokens
    return image, tokens, padding


# ------------------------------------------------------------------------------------- layout

def test_state_dict_has_torchscale_names_and_shapes():
    state = tiny().state_dict()
    n = (32 // 8) ** 2
    expected = {
        "text_embed.weight": (100, 64), "vision_embed.proj.weight": (64, 3, 8, 8), "vision_embed.proj.bias": (64,),
        "vision_embed.cls_token": (1, 1, 64), "vision_embed.mask_token": (1, 1, 64),
        "encoder.embed_positions.A.weight": (n + 3, 64), "encoder.embed_positions.B.weight": (24, 64),
        **{f"encoder.layer_norm.{way}.{p}": (64,) for way in "AB" for p in ("weight", "bias")},
    }
    per_layer = {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (64, 64), "self_attn.v_proj": (64, 64),
                 "self_attn.out_proj": (64, 64), "self_attn.inner_attn_ln": (64,), "self_attn_layer_norm": (64,),
                 "ffn.fc1": (128, 64), "ffn.ffn_layernorm": (128,), "ffn.fc2": (64, 128), "final_layer_norm": (64,)}
    for i in range(2):
        for name, shape in per_layer.items():
            for way in "AB":  # the copy sits where torchscale's MultiwayWrapper puts it: ffn.A.fc1, q_proj.A
                path = name.replace("ffn.", f"ffn.{way}.") if name.startswith("ffn.") else f"{name}.{way}"
                expected[f"encoder.layers.{i}.{path}.weight"] = shape
                expected[f"encoder.layers.{i}.{path}.bias"] = (shape[0],)
    assert {key: tuple(value.shape) for key, value in state.items()} == expected


def test_base_parameter_counts():
    with torch.device("meta"):
        at_480, at_224 = BEiT3(size="base", img_size=480), BEiT3(size="base", img_size=224)
        large = BEiT3(size="large", img_size=480)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(at_480) == 221_528_064 and count(at_224) == 220_987_392
    assert count(at_480.encoder.layers[0]) == 14_191_104 and count(at_480.text_embed) == 49_159_680
    assert at_480.encoder.embed_positions.A.weight.shape == (903, 768)
    assert at_224.encoder.embed_positions.A.weight.shape == (199, 768)
    assert 673.3e6 < count(large) < 673.5e6  # spec: 673.42M at 480


def test_bad_sizes_are_user_errors():
    with pytest.raises(RisbenchError, match="model.encoder.size"):
        BEiT3(size="huge")
    with pytest.raises(RisbenchError, match="multiple of the BEiT-3 patch size"):
        BEiT3(**{**TINY, "img_size": 36})
    with pytest.raises(RisbenchError, match="32x32"):
        tiny()(image=torch.randn(1, 3, 48, 48))
    with pytest.raises(RisbenchError, match="tokenizer.max_length"):
        tiny()(tokens=torch.zeros(1, 23, dtype=torch.long))


# ------------------------------------------------------------------------------------- torchscale

@pytest.mark.skipif(not HAS_TORCHSCALE, reason="torchscale/fairscale not importable: install the equivalence extra "
                    "with `pip install --no-deps torchscale fairscale` (make install does)")
@pytest.mark.parametrize("fused", [True, False])
def test_same_outputs_as_torchscale_on_the_same_weights(fused):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchscale imports timm.models.layers
        from torchscale.architecture.config import EncoderConfig
        from torchscale.model.BEiT3 import BEiT3 as TorchscaleBEiT3
    torch.manual_seed(0)
    config = EncoderConfig(multiway=True, vocab_size=100, img_size=32, patch_size=8, encoder_embed_dim=64,
                           encoder_attention_heads=4, encoder_ffn_embed_dim=128, encoder_layers=2,
                           max_source_positions=24, normalize_output=True, no_output_layer=True,
                           layernorm_embedding=False, drop_path_rate=0.1)
    reference = TorchscaleBEiT3(config).eval()
    with torch.no_grad():  # make every weight matter: no unit LayerNorms, no zero biases or tokens
        for param in reference.parameters():
            param.add_(0.05 * torch.randn_like(param))
    ours = tiny(drop_path_rate=0.1)
    ours.load_state_dict(reference.state_dict(), strict=True)
    for module in ours.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
    hidden = []
    for layer in reference.encoder.layers:
        layer.register_forward_hook(lambda module, args, out: hidden.append(out[0]))
    image, tokens, padding = inputs()
    cases = {  # name: (torchscale's inputs, ours)
        "vision": (dict(visual_tokens=image), dict(image=image)),
        "text": (dict(textual_tokens=tokens, text_padding_position=padding), dict(tokens=tokens, padding_mask=padding)),
        "joint": (dict(visual_tokens=image, textual_tokens=tokens, text_padding_position=padding),
                  dict(image=image, tokens=tokens, padding_mask=padding)),
    }
    with torch.no_grad():
        for name, (theirs_in, ours_in) in cases.items():
            hidden.clear()
            expected = reference(**theirs_in)
            got = ours(**ours_in, layers=[1, 2])
            assert got["split"] == {"vision": 17, "text": 0, "joint": 17}[name]
            torch.testing.assert_close(got["out"], expected["encoder_out"], atol=1e-5, rtol=0, msg=name)
            for j, state in enumerate(hidden, start=1):
                torch.testing.assert_close(got["layers"][j], state, atol=1e-5, rtol=0, msg=f"{name} layer {j}")


# ------------------------------------------------------------------------------------- multiway routing

def test_vision_only_forward_leaves_language_weights_without_gradient():
    model = tiny().train()
    image, tokens, padding = inputs()
    model(image=image)["out"].square().sum().backward()
    language = {name: p.grad for name, p in model.named_parameters() if ".B." in name}
    vision = {name: p.grad for name, p in model.named_parameters() if ".A." in name}
    assert language and all(grad is None or not grad.any() for grad in language.values())
    assert vision and all(grad is not None and grad.abs().sum() > 0 for grad in vision.values())
    assert model.text_embed.weight.grad is None
    model.zero_grad(set_to_none=True)
    model(tokens=tokens, padding_mask=padding)["out"].square().sum().backward()
    assert all(p.grad is None or not p.grad.any() for name, p in model.named_parameters()
               if ".A." in name or name.startswith("vision_embed"))


def test_text_changes_the_visual_tokens_and_padded_ids_change_nothing():
    model = tiny()
    image, tokens, padding = inputs()
    with torch.no_grad():
        out = model(image=image, tokens=tokens, padding_mask=padding)["out"]
        other = tokens.clone()
        other[:, 1] = (other[:, 1] + 7) % 96 + 4  # a real word of both expressions
        changed = model(image=image, tokens=other, padding_mask=padding)["out"]
        assert (changed[:, :17] - out[:, :17]).abs().amax(dim=(1, 2)).min() > 1e-3  # fusion is real
        padded = tokens.clone()
        padded[1, 4:] = torch.tensor([5, 6, 7])  # other ids where expression 2 is padding
        torch.testing.assert_close(model(image=image, tokens=padded, padding_mask=padding)["out"], out,
                                   atol=0, rtol=0)
        # and the padded expression equals itself alone, without the padding columns
        alone = model(image=image[1:], tokens=tokens[1:, :4], padding_mask=padding[1:, :4])["out"]
        torch.testing.assert_close(alone, out[1:, :17 + 4], atol=1e-5, rtol=0)


def test_explicit_attention_matches_fused():
    model = tiny()
    image, tokens, padding = inputs()
    with torch.no_grad():
        fused = model(image=image, tokens=tokens, padding_mask=padding)["out"]
        with explicit_attention(model):
            explicit = model(image=image, tokens=tokens, padding_mask=padding)["out"]
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=0)


def test_requested_layers_and_early_stop():
    model = tiny()
    image, tokens, padding = inputs()
    with torch.no_grad():
        full = model(image=image, tokens=tokens, padding_mask=padding, layers=[1, 2])
        early = model(image=image, tokens=tokens, padding_mask=padding, layers=[1], final_norm=False)
    assert set(full["layers"]) == {1, 2} and full["layers"][1].shape == (2, 17 + 7, 64)
    assert early["out"] is None and torch.equal(early["layers"][1], full["layers"][1])
    with pytest.raises(RisbenchError, match="out of range"):
        model(image=image, layers=[3])


# ------------------------------------------------------------------------------------- checkpoints

def release_checkpoint(model: BEiT3, grid: int) -> dict:
    """A synthetic release file: ``model`` state dict under ``beit3.`` at a coarser grid, plus task heads."""
    state = {f"beit3.{key}": torch.randn_like(value) for key, value in model.state_dict().items()}
    state["beit3.encoder.embed_positions.A.weight"] = torch.randn(grid * grid + 3, model.embed_dim)
    state["mlm_head.weight"] = torch.randn(100, model.embed_dim)  # a pretraining head, not ours
    return {"model": state}


def test_release_checkpoint_loads_with_the_position_table_resampled(tmp_path):
    model = tiny(img_size=48, pretrained=True, checkpoint=str(tmp_path / "beit3.pth"))  # 6x6 patches
    checkpoint = release_checkpoint(model, grid=4)
    checkpoint["args"] = argparse.Namespace(lr=1e-4)  # unilm saves its arguments beside the weights
    torch.save(checkpoint, tmp_path / "beit3.pth")
    model.load_pretrained()
    state = checkpoint["model"]
    assert torch.equal(model.text_embed.weight, state["beit3.text_embed.weight"])
    assert torch.equal(model.encoder.layers[1].ffn.B.fc2.weight, state["beit3.encoder.layers.1.ffn.B.fc2.weight"])
    table = model.encoder.embed_positions.A.weight
    assert table.shape == (36 + 3, 64)
    assert torch.equal(table[:3], state["beit3.encoder.embed_positions.A.weight"][:3])
    # one module-wrapped file and a raw state dict load the same
    torch.save({"module": checkpoint["model"]}, tmp_path / "beit3.pth")
    again = tiny(img_size=48, pretrained=True, checkpoint=str(tmp_path / "beit3.pth"))
    again.load_pretrained()
    assert torch.equal(again.encoder.embed_positions.A.weight, table)


def test_resampling_keeps_the_extra_rows_and_a_constant_grid():
    table = torch.cat([torch.randn(3, 8), torch.full((16, 8), 0.25)])
    resampled = resample_vision_positions(table, 36)
    assert resampled.shape == (39, 8) and torch.equal(resampled[:3], table[:3])
    torch.testing.assert_close(resampled[3:], torch.full((36, 8), 0.25))
    # a smooth grid stays smooth and keeps its range; the same size is a no-op
    ramp = torch.cat([torch.zeros(3, 1), torch.arange(16.0)[:, None]])
    out = resample_vision_positions(ramp, 64)[3:].reshape(8, 8)
    assert out[0, 0] < out[0, -1] < out[-1, -1] and resample_vision_positions(ramp, 16) is ramp
    with pytest.raises(RisbenchError, match="square"):
        resample_vision_positions(torch.randn(20, 8), 36)


def test_checkpoint_errors_say_what_to_fix(tmp_path):
    with pytest.raises(MissingFileError, match="model.encoder.pretrained=false"):
        tiny(pretrained=True, checkpoint=str(tmp_path / "missing.pth")).load_pretrained()
    model = tiny()
    wide = release_checkpoint(tiny(embed_dim=32, num_heads=2), grid=4)["model"]
    with pytest.raises(RisbenchError, match="shapes differ"):
        checkpoint_filter_fn(wide, model)
    partial = {key: value for key, value in release_checkpoint(model, 4)["model"].items() if "layers.1." not in key}
    torch.save({"model": partial}, tmp_path / "partial.pth")
    with pytest.raises(RisbenchError, match="missing keys"):
        tiny(pretrained=True, checkpoint=str(tmp_path / "partial.pth")).load_pretrained()
