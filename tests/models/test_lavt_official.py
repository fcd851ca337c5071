"""LAVT equals the official code: its released-checkpoint layout converts, and the converted weights give the
official outputs on the official code's own test vectors (tests/fixtures/lavt_official, README.txt there).

The vectors: LAVT-RIS @ 1da0af9f at a tiny config (Swin embed 8, depths [1,1,2,1], window 4, 128 px, a 2-layer
32-wide BERT), random weights with every constant perturbed, a batch with padded text; every intermediate
the official forward produces is stored. A second config (window 3, every stage padded) is checked against
the pad-then-shift reference block of tests/official_swin.py.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path, PurePosixPath

import pytest
import torch
from timm.models.swin_transformer import SwinTransformerBlock

from risbench.convert import convert_lavt_official, main
from risbench.errors import RisbenchError
from risbench.lit import RISLitModule
from risbench.losses import resize_logits
from risbench.models.common.attention import explicit_attention
from risbench.models.lavt import LAVT
from risbench.tasks.common import build_net, check_checkpoint_matches
from tests.helpers import build_model, compose_config, official_vectors
from tests.official_swin import official_block

FIXTURES = Path(__file__).parents[1] / "fixtures" / "lavt_official"
CONFIG = json.loads((FIXTURES / "config.json").read_text())
NODES = {key: CONFIG["risbench_equivalent"][key] for key in ("text", "vision", "channels")}
VOCAB = CONFIG["risbench_equivalent"]["vocab_size"]
INTERMEDIATES = ["text_features", "stage1", "stage2", "stage3", "stage4", "stage1_tokens_out", "stage2_tokens_out",
                 "stage3_tokens_out", "decoder_y", "logits_quarter"]


def node_overrides(prefix: str, nodes: dict) -> list[str]:
    """config.json's risbench nodes as Hydra overrides under ``prefix`` (``model`` or ``model.base``)."""
    out = []
    for name, value in nodes.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for key, item in items:
            path = f"{prefix}.{name}" + (f".{key}" if key else "")
            out.append(f"++{path}={json.dumps(item).replace(' ', '')}")
    return out


def read_official(path: Path = FIXTURES / "checkpoint.pth") -> dict:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def net_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {key.removeprefix("net."): value for key, value in state.items()}


@pytest.fixture(scope="module")
def vectors() -> tuple[dict, dict]:
    return official_vectors(FIXTURES)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("lavt") / "lavt_tiny.ckpt"
    return out, convert_lavt_official(FIXTURES / "checkpoint.pth", out, node_overrides("model", NODES))


def tiny_lavt(state: dict[str, torch.Tensor] | None = None, **vision) -> LAVT:
    torch.manual_seed(0)
    model = build_model("lavt", VOCAB, **{**NODES, "vision": {**NODES["vision"], **vision}}).eval()
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model


def forward_with_intermediates(model: LAVT, batch: dict, root: torch.nn.Module | None = None) -> dict:
    """The official test vectors' quantities from one forward of ``root`` (default the LAVT itself)."""
    got: dict[str, torch.Tensor] = {}
    hooks = [model.text.register_forward_hook(lambda m, a, out: got.update(text_features=out[0])),
             model.vision.register_forward_hook(
                 lambda m, a, out: got.update({f"stage{s + 1}": f for s, f in enumerate(out)})),
             model.decoder.register_forward_hook(lambda m, a, out: got.update(decoder_y=out))]
    for s in range(1, 4):  # stage s's gated tokens after PatchMerging = what stage s + 1's blocks get
        hooks.append(model.vision.swin.layers[s].downsample.register_forward_hook(
            lambda m, a, out, s=s: got.update({f"stage{s}_tokens_out": out.flatten(1, 2)})))
    root = root or model
    with torch.no_grad():
        out = root(batch)
    for hook in hooks:
        hook.remove()
    got["logits_quarter"] = out["logits"][-1]
    got["logits"] = resize_logits(out["logits"][-1], tuple(batch["image"].shape[-2:]))  # LAVT's final upsampling
    got["mask_logits"] = root.mask_logits(out)
    return got


def set_fused(model: torch.nn.Module, fused: bool) -> None:
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused


def assert_official(got: dict, want: dict, atol: float = 1e-5) -> None:
    for name in [*INTERMEDIATES, "logits"]:
        assert got[name].shape == want[name].shape, name
        assert torch.allclose(got[name], want[name], atol=atol), (name, (got[name] - want[name]).abs().max().item())
    fg = want["logits"][:, 1:2] - want["logits"][:, :1]  # the harness scores fg - bg >= 0 = LAVT's argmax
    assert torch.allclose(got["mask_logits"], fg, atol=2 * atol)


# --- the official test vectors ---

def test_converted_checkpoint_counts_and_form(converted):
    path, summary = converted
    assert summary["mapped"] == 215
    assert dict(summary["dropped"]) == {
        "relative_position_index: a buffer that timm rebuilds from the window size": 5,
        "the last stage's res_gate: LAVT computes and discards its output (no stage follows)": 2}
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert set(saved) == {"state_dict", "risbench"} and all(k.startswith("net.") for k in saved["state_dict"])
    official = read_official()
    pwam = official["model"]["backbone.layers.2.fusion.image_lang_att.W.0.weight"]
    assert torch.equal(saved["state_dict"]["net.vision.pwams.2.attn_out.weight"], pwam[:, :, 0])
    merge = official["model"]["backbone.layers.0.downsample.reduction.weight"]
    assert torch.equal(saved["state_dict"]["net.vision.swin.layers.1.downsample.reduction.weight"], merge)


@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_lavt_equals_the_official_outputs(converted, vectors, path):
    batch, want = vectors
    model = tiny_lavt(net_state(converted[0]))
    if path == "sdpa":
        set_fused(model, True)  # PWAM and timm's window attention on F.scaled_dot_product_attention
        assert model.text.bert.config._attn_implementation == "sdpa"
        got = forward_with_intermediates(model, batch)
    else:
        with explicit_attention(model):
            got = forward_with_intermediates(model, batch)
    assert_official(got, want)


def test_lavt_one_form_converts_to_the_same_weights(converted, tmp_path):
    """``lavt_one``: BERT inside the model as text_encoder.*, no args (the architecture from overrides)."""
    official = read_official()
    model = {**official["model"], **{f"text_encoder.{k}": v for k, v in official["bert_model"].items()}}
    torch.save({"model": model}, tmp_path / "lavt_one.pth")
    convert_lavt_official(tmp_path / "lavt_one.pth", tmp_path / "one.ckpt", node_overrides("model", NODES))
    ours, theirs = net_state(tmp_path / "one.ckpt"), net_state(converted[0])
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_eval_and_predict_accept_the_converted_checkpoint(converted, vectors):
    """What mode=eval does with ckpt_path=OUT (check, then strict load into the LightningModule), on the
    config composed from the overrides the converter prints; mode=predict's check on {'net': model}."""
    path, summary = converted
    assert "data=refcoco" in summary["eval_overrides"]  # from the checkpoint's args.dataset
    cfg = compose_config(summary["eval_overrides"])

    net = build_net(cfg, VOCAB)
    lit = RISLitModule(net, optim=cfg.optim, eval_cfg=cfg.eval)
    lit.load_state_dict(check_checkpoint_matches(str(path), lit)["state_dict"])
    check_checkpoint_matches(str(path), torch.nn.ModuleDict({"net": net}))
    batch, want = vectors
    got = forward_with_intermediates(net.eval(), batch)
    assert torch.allclose(got["logits"], want["logits"], atol=1e-5)


def test_sadlr_base_equals_the_official_outputs(vectors, tmp_path):
    """SADLR with no head is LAVT: the converter puts the weights under SADLR's base."""
    overrides = ["model=sadlr", "model/head=none", *node_overrides("model.base", NODES)]
    summary = convert_lavt_official(FIXTURES / "checkpoint.pth", tmp_path / "sadlr.ckpt", overrides)
    assert "model.base.vision.window_size=7" not in summary["eval_overrides"]  # the user's window 4 wins
    torch.manual_seed(0)
    sadlr = build_model("sadlr", VOCAB, ["model/head=none"], base=NODES).eval()
    sadlr.load_state_dict(net_state(tmp_path / "sadlr.ckpt"), strict=True)
    batch, want = vectors
    assert_official(forward_with_intermediates(sadlr.base, batch, root=sadlr), want)


def test_swin_release_layout_gives_the_same_backbone(converted, vectors, tmp_path):
    """The fixture's Swin weights written as a Microsoft Swin release (downsample at the end of a stage,
    buffers, final norm and head) load through SwinTower.load_pretrained to the same official outputs."""
    official = read_official()["model"]
    release = {key.removeprefix("backbone."): value for key, value in official.items()
               if re.match(r"backbone\.(patch_embed|layers\.\d+\.(blocks|downsample))\.", key)}
    release.update({"norm.weight": torch.ones(64), "norm.bias": torch.zeros(64), "head.weight": torch.randn(10, 64),
                    "head.bias": torch.zeros(10)})
    assert "layers.0.downsample.reduction.weight" in release  # really the release layout
    torch.save({"model": release}, tmp_path / "swin_release.pth")
    model = tiny_lavt()
    rest = {k: v for k, v in net_state(converted[0]).items() if not k.startswith("vision.swin.")}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    assert unexpected == [] and missing and all(k.startswith("vision.swin.") for k in missing)
    model.vision.swin.checkpoint = str(tmp_path / "swin_release.pth")
    model.vision.swin.load_pretrained()
    batch, want = vectors
    assert_official(forward_with_intermediates(model, batch), want)


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli.ckpt"
    assert main(["lavt-official", str(FIXTURES / "checkpoint.pth"), str(out), *node_overrides("model", NODES)]) == 0
    printed = capsys.readouterr().out
    assert "215 weights mapped, 7 entries dropped" in printed
    assert "evaluate with: python -m risbench mode=eval model=lavt scale=paper" in printed
    assert printed.rstrip().endswith(f"data=refcoco data.img_size=128 ckpt_path={out}") and out.is_file()
    written = out.read_bytes()
    assert main(["lavt-official", str(FIXTURES / "checkpoint.pth"), str(out), *node_overrides("model", NODES)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == written  # never overwritten
    blocker = tmp_path / "a_file"
    blocker.write_text("keep\n")
    assert main(["lavt-official", str(FIXTURES / "checkpoint.pth"), str(blocker / "x.ckpt")]) == 2
    assert f"{blocker} is a file, not a folder" in capsys.readouterr().err and blocker.read_text() == "keep\n"


def test_bad_checkpoints_are_one_clear_error(tmp_path):
    official = read_official()
    official["model"]["backbone.layers.0.fusion.extra.weight"] = torch.zeros(1)
    torch.save(official, tmp_path / "extra.pth")
    with pytest.raises(RisbenchError, match="not LAVT's.*fusion.extra.weight"):
        convert_lavt_official(tmp_path / "extra.pth", tmp_path / "out.ckpt", node_overrides("model", NODES))
    with pytest.raises(RisbenchError, match="does not fit the model.*of another shape"):  # args say Swin-B
        convert_lavt_official(FIXTURES / "checkpoint.pth", tmp_path / "out.ckpt", [])
    torch.save({"model": {}, "output_dir": PurePosixPath("checkpoints")}, tmp_path / "unsafe.pth")
    with pytest.raises(RisbenchError, match="could not be read safely"):
        convert_lavt_official(tmp_path / "unsafe.pth", tmp_path / "out.ckpt", [])
    assert main(["lavt-official", str(tmp_path / "missing.pth"), str(tmp_path / "out.ckpt")]) == 2
    assert not (tmp_path / "out.ckpt").exists()


@pytest.mark.parametrize("bert_model, message", [
    (None, r"release.pth holds no BERT weights: neither a 'bert_model' entry .*no separate BERT file"),
    ([1, 2], r"release.pth: the checkpoint's 'bert_model' is a list, not BERT's state dict"),
], ids=["absent", "a list"])
def test_a_release_without_usable_bert_is_one_clear_error(tmp_path, capsys, bert_model, message):
    """A `lavt` file whose 'bert_model' is missing (only 'model' kept) or is not a state dict."""
    official = {**read_official(), "bert_model": bert_model}
    if bert_model is None:
        del official["bert_model"]
    torch.save(official, tmp_path / "release.pth")
    assert main(["lavt-official", str(tmp_path / "release.pth"), str(tmp_path / "out.ckpt"),
                 *node_overrides("model", NODES)]) == 2
    assert re.search(message, capsys.readouterr().err, re.S) and not (tmp_path / "out.ckpt").exists()


def test_a_release_with_a_value_that_is_not_a_tensor_is_one_clear_error(tmp_path, capsys):
    official = read_official()
    key = next(iter(official["model"]))
    torch.save({**official, "model": {**official["model"], key: [1, 2]}}, tmp_path / "release.pth")
    assert main(["lavt-official", str(tmp_path / "release.pth"), str(tmp_path / "out.ckpt"),
                 *node_overrides("model", NODES)]) == 2
    err = capsys.readouterr().err
    assert "does not fit the model" in err and "1 values are not tensors" in err and "(list)" in err, err
    assert not (tmp_path / "out.ckpt").exists()


# --- every stage padded (window 3): the tower against the pad-then-shift reference block ---

def perturb_swin(model: LAVT) -> None:
    """Relative-position tables at std 1, every other 1-D Swin parameter moved off its constant init."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.vision.swin.named_parameters():
            if "relative_position_bias_table" in name:
                param.normal_()
            elif param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))


def timm_order(block, x: torch.Tensor) -> torch.Tensor:
    """timm's own order on the same block: roll the unpadded grid, then pad."""
    x = x + SwinTransformerBlock._attn(block, block.norm1(x))
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_every_stage_padded_matches_the_pad_then_shift_reference(vectors, path):
    batch, _ = vectors
    model = tiny_lavt(window_size=3)
    perturb_swin(model)
    set_fused(model, path == "sdpa")
    blocks = [block for stage in model.vision.swin.layers for block in stage.blocks]
    grids = [stage.output_resolution[0] for stage in model.vision.swin.layers]
    assert grids == [32, 16, 8, 4] and all(g % 3 for g in grids)  # every stage pads
    assert [b.shift_size[0] for b in blocks] == [0, 0, 0, 1, 0] and all(b.window_size == (3, 3) for b in blocks)

    seen = []
    hooks = [b.register_forward_hook(lambda m, a, out: seen.append((m, a[0], out))) for b in blocks]
    ours = forward_with_intermediates(model, batch)
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        for block, x, out in seen:  # each block on its own input
            assert torch.allclose(out, official_block(block, x, 3, block.shift_size[0]), atol=1e-5)

    def run_with(reference) -> dict:
        hooks = [b.register_forward_hook(lambda m, a, out: reference(m, a[0])) for b in blocks]
        got = forward_with_intermediates(model, batch)
        for hook in hooks:
            hook.remove()
        return got

    official = run_with(lambda m, x: official_block(m, x, 3, m.shift_size[0]))  # the whole model, reference blocks
    for name in [*INTERMEDIATES, "logits"]:
        assert torch.allclose(ours[name], official[name], atol=1e-5), name
    timm = run_with(timm_order)  # and the test can tell: timm's roll-then-pad order is another model
    assert not torch.allclose(ours["stage3"], timm["stage3"], atol=1e-3)


# --- the released layout at paper size (Swin-B window 12, 480 px, BERT-base) ---

def official_layout(embed_dim: int, depths: list[int], num_heads: list[int], window: int, text_dim: int,
                    text_layers: int, text_intermediate: int, vocab: int, positions: int) -> tuple[dict, dict]:
    """Key -> shape of LAVT's ``model`` and ``bert_model`` state dicts, as its code names them."""
    model = {"backbone.patch_embed.proj.weight": (embed_dim, 3, 4, 4), "backbone.patch_embed.proj.bias": (embed_dim,),
             "backbone.patch_embed.norm.weight": (embed_dim,), "backbone.patch_embed.norm.bias": (embed_dim,)}
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        d, stage = embed_dim * 2 ** i, f"backbone.layers.{i}"
        for j in range(depth):
            block = f"{stage}.blocks.{j}"
            model.update({f"{block}.norm1.weight": (d,), f"{block}.norm1.bias": (d,),
                          f"{block}.attn.relative_position_bias_table": ((2 * window - 1) ** 2, heads),
                          f"{block}.attn.relative_position_index": (window ** 2, window ** 2),
                          f"{block}.attn.qkv.weight": (3 * d, d), f"{block}.attn.qkv.bias": (3 * d,),
                          f"{block}.attn.proj.weight": (d, d), f"{block}.attn.proj.bias": (d,),
                          f"{block}.norm2.weight": (d,), f"{block}.norm2.bias": (d,),
                          f"{block}.mlp.fc1.weight": (4 * d, d), f"{block}.mlp.fc1.bias": (4 * d,),
                          f"{block}.mlp.fc2.weight": (d, 4 * d), f"{block}.mlp.fc2.bias": (d,)})
        for conv, cin in (("vis_project.0", d), ("image_lang_att.f_key.0", text_dim),
                          ("image_lang_att.f_query.0", d), ("image_lang_att.f_value.0", text_dim),
                          ("image_lang_att.W.0", d), ("project_mm.0", d)):
            model.update({f"{stage}.fusion.{conv}.weight": (d, cin, 1), f"{stage}.fusion.{conv}.bias": (d,)})
        model.update({f"{stage}.res_gate.0.weight": (d, d), f"{stage}.res_gate.2.weight": (d, d)})
        if i < len(depths) - 1:
            model.update({f"{stage}.downsample.reduction.weight": (2 * d, 4 * d),
                          f"{stage}.downsample.norm.weight": (4 * d,), f"{stage}.downsample.norm.bias": (4 * d,)})
    for i in range(len(depths)):
        d = embed_dim * 2 ** i
        model.update({f"backbone.norm{i}.weight": (d,), f"backbone.norm{i}.bias": (d,)})
    hidden, c4 = 4 * embed_dim, 8 * embed_dim
    for k, cin in ((4, c4 + c4 // 2), (3, hidden + c4 // 4), (2, hidden + c4 // 8)):
        for j, inputs in ((1, cin), (2, hidden)):
            model[f"classifier.conv{j}_{k}.weight"] = (hidden, inputs, 3, 3)
            model.update({f"classifier.bn{j}_{k}.{p}": (hidden,) for p in ("weight", "bias", "running_mean",
                                                                          "running_var")})
            model[f"classifier.bn{j}_{k}.num_batches_tracked"] = ()
    model.update({"classifier.conv1_1.weight": (2, hidden, 1, 1), "classifier.conv1_1.bias": (2,)})
    bert = {"embeddings.word_embeddings.weight": (vocab, text_dim),
            "embeddings.position_embeddings.weight": (positions, text_dim),
            "embeddings.token_type_embeddings.weight": (2, text_dim),
            "embeddings.LayerNorm.weight": (text_dim,), "embeddings.LayerNorm.bias": (text_dim,)}
    for n in range(text_layers):
        layer = f"encoder.layer.{n}"
        for name, (rows, cols) in (("attention.self.query", (text_dim, text_dim)),
                                   ("attention.self.key", (text_dim, text_dim)),
                                   ("attention.self.value", (text_dim, text_dim)),
                                   ("attention.output.dense", (text_dim, text_dim)),
                                   ("intermediate.dense", (text_intermediate, text_dim)),
                                   ("output.dense", (text_dim, text_intermediate))):
            bert.update({f"{layer}.{name}.weight": (rows, cols), f"{layer}.{name}.bias": (rows,)})
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            bert.update({f"{layer}.{norm}.weight": (text_dim,), f"{layer}.{norm}.bias": (text_dim,)})
    return model, bert


def test_layout_generator_is_the_official_layout():
    """The generator, at the vectors' config, gives exactly the official checkpoint's keys and shapes."""
    model, bert = official_layout(8, [1, 1, 2, 1], [1, 2, 4, 8], 4, 32, 2, 64, 1000, 32)
    official = read_official()
    assert {k: tuple(v.shape) for k, v in official["model"].items()} == model
    assert {k: tuple(v.shape) for k, v in official["bert_model"].items()} == bert


def constant_tensors(shapes: dict, start: int) -> dict[str, torch.Tensor]:
    """Key i -> a tensor of the key's shape filled with the number start + i, stored as one element (a
    stride-0 view), so a paper-size checkpoint costs bytes and each loaded weight says where it came from."""
    out = {}
    for i, (key, shape) in enumerate(shapes.items()):
        integral = key.endswith(("relative_position_index", "num_batches_tracked"))
        out[key] = torch.tensor(start + i, dtype=torch.long if integral else torch.float32).expand(shape)
    return out


@pytest.mark.parametrize("swin_weights, window, extra", [
    ("./pretrained_weights/swin_base_patch4_window12_384_22k.pth", 12, []),
    ("./pretrained_weights/swin_base_patch4_window7_224_22k.pth", 7, ["model.vision.window_size=7"])])
def test_paper_size_release_loads_strictly(tmp_path, swin_weights, window, extra):
    model_shapes, bert_shapes = official_layout(128, [2, 2, 18, 2], [4, 8, 16, 32], window, 768, 12, 3072, 30522, 512)
    model, bert = constant_tensors(model_shapes, 1), constant_tensors(bert_shapes, 1 + len(model_shapes))
    args = argparse.Namespace(model="lavt", swin_type="base", window12=False, pretrained_swin_weights=swin_weights,
                              img_size=480, mha="", dataset="refcoco+", splitBy="unc")
    torch.save({"model": model, "bert_model": bert, "args": args, "epoch": 39, "optimizer": {}}, tmp_path / "rc+.pth")
    assert (tmp_path / "rc+.pth").stat().st_size < 2_000_000

    summary = convert_lavt_official(tmp_path / "rc+.pth", tmp_path / "rc+.ckpt", [])
    # the counts measured on the official code: 598 renames + 24 squeezed PWAM convs, 24 + 2 dropped
    assert summary["mapped"] == 622 and sum(summary["dropped"].values()) == 26
    assert summary["eval_overrides"] == ["model=lavt", "scale=paper", "data=refcoco_plus", *extra]

    cfg = compose_config(summary["eval_overrides"])  # what mode=eval builds, on the meta device (no memory)

    with torch.device("meta"):
        net = build_net(cfg, 30522)
    lit = RISLitModule(net, optim=cfg.optim, eval_cfg=cfg.eval)
    lit.load_state_dict(check_checkpoint_matches(str(tmp_path / "rc+.ckpt"), lit)["state_dict"], strict=True,
                        assign=True)
    written = {**model, **{f"bert.{key}": value for key, value in bert.items()}}
    index = {int(value.flatten()[0]): key for key, value in written.items()}
    source = {key: index[int(value.flatten()[0])] for key, value in net.state_dict().items()}
    squeezed = [key for key in source if ".pwams." in key and key.endswith(".weight")]
    assert len(squeezed) == 24 and all(model[source[k]].ndim == 3 and net.get_parameter(k).ndim == 2 for k in squeezed)
    assert {key: source[key] for key in PAPER_PAIRS} == PAPER_PAIRS


# risbench key -> the official key it must come from (one of each kind of rename)
PAPER_PAIRS = {
    "vision.swin.layers.1.downsample.reduction.weight": "backbone.layers.0.downsample.reduction.weight",
    "vision.swin.layers.3.downsample.norm.bias": "backbone.layers.2.downsample.norm.bias",
    "vision.swin.layers.2.blocks.17.attn.relative_position_bias_table":
        "backbone.layers.2.blocks.17.attn.relative_position_bias_table",
    "vision.pwams.2.attn_out.weight": "backbone.layers.2.fusion.image_lang_att.W.0.weight",
    "vision.pwams.3.key.bias": "backbone.layers.3.fusion.image_lang_att.f_key.0.bias",
    "vision.gates.1.fc2.weight": "backbone.layers.1.res_gate.2.weight",
    "vision.norms.3.bias": "backbone.norm3.bias",
    "decoder.stages.0.0.0.weight": "classifier.conv1_4.weight",
    "decoder.stages.0.1.0.weight": "classifier.conv2_4.weight",
    "decoder.stages.1.1.1.running_var": "classifier.bn2_3.running_var",
    "decoder.stages.2.0.0.weight": "classifier.conv1_2.weight",
    "classifier.bias": "classifier.conv1_1.bias",
    "text.bert.encoder.layer.11.output.dense.weight": "bert.encoder.layer.11.output.dense.weight",
}
