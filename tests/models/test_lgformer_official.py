"""LGFormer equals the authors' code: their checkpoint layout converts, and the converted weights give their
outputs on their code's own test vectors (tests/fixtures/lgformer_official, README.txt there).

The vectors: the public LGFormer mirror @ ea4800e1 at a tiny config (Swin embed 8, depths [1,1,2,1], window
4, 128 px, a 2-layer 32-wide BERT, every hard-coded decoder width 32), random weights with every constant
perturbed, a batch with padded text, the pure-PyTorch deformable attention; all 7 decoder outputs and the
intermediates are stored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from risbench.convert import convert_lgformer_official as convert_release
from risbench.convert import main
from risbench.errors import RisbenchError
from risbench.lit import RISLitModule
from risbench.models.common.attention import explicit_attention
from risbench.models.common.weights import read_released_checkpoint
from risbench.models.lgformer import LGFormer, convert_lgformer_official
from risbench.tasks.common import check_checkpoint_matches
from tests.helpers import build_model, compose_config, official_vectors

FIXTURES = Path(__file__).parents[1] / "fixtures" / "lgformer_official"
CONFIG = json.loads((FIXTURES / "config.json").read_text())
SWIN, BERT = CONFIG["swin_MultiModalSwinTransformer"], CONFIG["bert_BertConfig"]
DECODER = CONFIG["decoder_MSDeformDynamicConvDecoding"]
# config.json's constructor arguments as risbench's config keys
TINY = [
    "model.text.pretrained=false", f"model.text.num_layers={BERT['num_hidden_layers']}",
    f"model.text.hidden_size={BERT['hidden_size']}", f"model.text.num_heads={BERT['num_attention_heads']}",
    f"model.text.intermediate_size={BERT['intermediate_size']}",
    f"++model.text.max_positions={BERT['max_position_embeddings']}",
    "model.vision.pretrained=false", f"model.vision.embed_dim={SWIN['embed_dim']}",
    f"model.vision.depths={SWIN['depths']}".replace(" ", ""), f"model.vision.num_heads={SWIN['num_heads']}".replace(" ", ""),
    f"model.vision.window_size={SWIN['window_size']}", f"data.img_size={CONFIG['image_size'][0]}",
    f"model.pixel_decoder.dim={DECODER['pixel_decoder']['conv_dim']}", f"model.pixel_decoder.mask_dim={DECODER['mask_dim']}",
    f"model.pixel_decoder.ffn_dim={DECODER['pixel_decoder']['transformer_dim_feedforward']}",
    f"model.pixel_decoder.l2va_ffn_dim={DECODER['pixel_decoder']['text_cross_attn_per_layer']['dim_feedforward']}",
    f"model.decoder.ffn_dim={DECODER['dynamic_conv_gen_body']['dim_ffn']}",
    f"tokenizer.max_length={CONFIG['tokens']}",
]
VOCAB = BERT["vocab_size"]
ATOL = 1e-5


@pytest.fixture(scope="module")
def vectors() -> tuple[dict, dict]:
    return official_vectors(FIXTURES)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("lgformer") / "lgformer_tiny.ckpt"
    return out, convert_release(FIXTURES / "checkpoint.pth", out, TINY)


def net_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {key.removeprefix("net."): value for key, value in state.items()}


def tiny_lgformer(state: dict[str, torch.Tensor] | None = None, overrides: tuple = ()) -> LGFormer:
    torch.manual_seed(0)
    model = build_model("lgformer", VOCAB, [*TINY, *overrides]).eval()
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model


def test_every_official_key_is_mapped_or_dropped_for_a_reason(converted):
    _, summary = converted
    official = read_released_checkpoint(FIXTURES / "checkpoint.pth", "fixture", "")["model"]
    state, dropped = convert_lgformer_official({"model": official})
    blocks = sum(SWIN["depths"])
    assert len(dropped) == blocks + 4                           # relative_position_index, last res/sym_res gates
    assert sum("relative_position_index" in key for key in dropped) == blocks
    assert sorted(k for k in dropped if "res_gate" in k) == [f"backbone.layers.3.{g}res_gate.{i}.weight"
                                                            for g in ("", "sym_") for i in (0, 2)]
    # 12 nn.MultiheadAttention (6 L2VA + 6 V2LA): 4 entries each -> 8 (q, k, v, out weights and biases)
    attention = sum(bool(re.search(r"\.cross_attn\.", key)) for key in official)
    assert attention == 12 * 4
    assert len(state) == len(official) - len(dropped) + 12 * 4
    assert summary["mapped"] == len(state) and sum(summary["dropped"].values()) == len(dropped)
    tiny_lgformer(state)  # a strict load: every parameter and buffer of the model accounted for


@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_lgformer_equals_the_official_outputs(converted, vectors, path):
    batch, expected = vectors
    model = tiny_lgformer(net_state(converted[0]))
    with torch.no_grad():
        if path == "explicit":
            with explicit_attention(model):
                out = model(batch)
        else:
            out = model(batch)
        words = model.text(batch["tokens"], batch["attention_mask"])[0]
    torch.testing.assert_close(words, expected["text_features"], atol=ATOL, rtol=1e-5)
    for s, stage in enumerate(out["stages"], start=1):
        torch.testing.assert_close(stage, expected[f"stage{s}"], atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(out["text"].transpose(1, 2), expected["text_out"], atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(out["mask_features"], expected["pixel_features"], atol=ATOL, rtol=1e-5)
    assert out["logits"].shape[1] == 7
    for k in range(7):
        torch.testing.assert_close(out["logits"][:, k:k + 1], expected[f"mask_quarter_{k}"], atol=ATOL, rtol=1e-5)
    final = model.mask_logits(out)
    torch.testing.assert_close(final, expected["mask_6"], atol=ATOL, rtol=1e-5)
    # the authors' prediction: sigmoid > 0.5 of the last output, upsampled without aligned corners
    assert torch.equal(final > 0, expected["mask_6"] > 0)
    assert not torch.allclose(F.interpolate(out["logits"][:, -1:], size=(128, 128), mode="bilinear",
                                            align_corners=True), expected["mask_6"], atol=ATOL)


def test_eval_accepts_the_converted_checkpoint(converted):
    path, summary = converted
    assert "model=lgformer" in summary["eval_overrides"]
    cfg = compose_config(summary["eval_overrides"])
    net = build_model("lgformer", VOCAB, TINY)
    lit = RISLitModule(net, cfg.optim, cfg.eval)
    lit.load_state_dict(check_checkpoint_matches(str(path), lit)["state_dict"])
    saved = torch.load(path, map_location="cpu", weights_only=True)["risbench"]
    assert saved["name"] == "lgformer-official" and saved["converted_from"] == "checkpoint.pth"


def test_text_length_must_match_the_key_embedding(converted, vectors):
    batch, _ = vectors
    model = tiny_lgformer(net_state(converted[0]))
    short = {**batch, "tokens": batch["tokens"][:, :12], "attention_mask": batch["attention_mask"][:, :12]}
    with pytest.raises(RisbenchError, match=r"model\.pixel_decoder\.text_length=20.*12 tokens"):
        model(short)


def test_command_line(tmp_path, capsys):
    out = tmp_path / "converted.ckpt"
    assert main(["lgformer-official", str(FIXTURES / "checkpoint.pth"), str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "entries dropped" in printed and "relative_position_index" in printed and "res_gate" in printed
    assert "python -m risbench mode=eval" in printed and out.is_file()


def test_bad_checkpoints_are_one_clear_error(tmp_path):
    official = read_released_checkpoint(FIXTURES / "checkpoint.pth", "fixture", "")
    extra = {**official, "model": {**official["model"], "classifier.extra_head.weight": torch.zeros(1)}}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(RisbenchError, match="not LGFormer's: \\['classifier.extra_head.weight'\\]"):
        convert_release(tmp_path / "extra.pth", tmp_path / "out.ckpt", TINY)
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(RisbenchError, match="no 'model' state dict"):
        convert_release(tmp_path / "other.pth", tmp_path / "out.ckpt", TINY)
    with pytest.raises(RisbenchError, match="does not fit the model"):  # the fixture's weights at paper widths
        convert_release(FIXTURES / "checkpoint.pth", tmp_path / "out.ckpt", TINY[:6])


def test_a_release_without_bert_is_one_clear_error(tmp_path, capsys):
    official = read_released_checkpoint(FIXTURES / "checkpoint.pth", "fixture", "")
    model = {key: value for key, value in official["model"].items() if not key.startswith("text_encoder.")}
    torch.save({**official, "model": model}, tmp_path / "release.pth")
    assert main(["lgformer-official", str(tmp_path / "release.pth"), str(tmp_path / "out.ckpt"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "release.pth holds no BERT weights: its 'model' has no text_encoder.embeddings.word_embeddings" in err
    assert "no separate BERT file" in err and not (tmp_path / "out.ckpt").exists()
