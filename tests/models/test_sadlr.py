"""SADLR fidelity (spec papers/sadlr.md §2.3-2.4, §4, §7) and behaviour; no pretrained weights needed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from risbench.losses import dice_loss
from risbench.errors import RisbenchError
from risbench.models.common.attention import explicit_attention
from risbench.models.common.text import masked_mean
from risbench.models.sadlr import SADLR, DynamicConv, SADLRHead, parse_structure
from risbench.profiling import count_macs, count_params
from risbench.config import instantiate_node
from tests.helpers import bf16_forward_and_loss, build_model, compose_config

TEXT = dict(pretrained=False, num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
            max_positions=32, trainable="all")
VISION = dict(pretrained=False, img_size=64, embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8],
              window_size=4, drop_path_rate=0.0)
SMALL_BASES = dict(lavt={}, lts=dict(neck_channels=32, num_heads=2, decoder_channels=16),
                   vlt=dict(neck_channels=32, num_heads=2, num_queries=4, decoder_channels=16))
SMALL_HEADS = dict(none={}, sadlr=dict(structure="d16-32"), cgan=dict(dim=16, num_heads=2, mlp_dim=32))
VOCAB = 50


def tiny(base: str = "lavt", head: str = "sadlr", head_options: dict | None = None) -> SADLR:
    """SADLR as conf/model/sadlr.yaml composes it, at toy widths."""
    torch.manual_seed(0)
    return build_model("sadlr", VOCAB, [f"model/base={base}", f"model/head={head}"], loss=dict(name="dice"),
                       base=dict(text=TEXT, vision=VISION, channels=32, **SMALL_BASES[base]),
                       head={**SMALL_HEADS[head], **(head_options or {})}).eval()


def sadlr_head(channels: int = 32, text_dim: int = 24, **options) -> SADLRHead:
    """A SADLR head with conf/model/head/sadlr.yaml's options (``options`` override them)."""
    node = compose_config(["model=sadlr", "scale=paper"]).model.head
    return instantiate_node(node, _convert_="all")(channels=channels, text_dim=text_dim, **options)


def make_batch(batch_size: int = 2, size: int = 64, length: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCAB, (batch_size, length), generator=g)
    mask = torch.ones(batch_size, length, dtype=torch.long)
    mask[-1, length // 2:] = 0
    gt = torch.zeros(batch_size, 1, size, size)
    gt[..., size // 4: size // 2, size // 8: size // 2] = 1.0
    return {"image": torch.randn(batch_size, 3, size, size, generator=g), "tokens": tokens * mask,
            "attention_mask": mask, "mask": gt}


def head_inputs(batch_size: int = 2, channels: int = 32, text_dim: int = 24, size: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch_size, 5, dtype=torch.long)
    mask[0, 3:] = 0
    words = torch.randn(batch_size, 5, text_dim, generator=g)
    return torch.randn(batch_size, channels, size, size, generator=g), words, mask, masked_mean(words, mask)


# --- structure strings and parameter counts (Table 4b) ---

@pytest.mark.parametrize("text, dims", [("d128", [128]), ("d64-256", [64, 256]), ("d128-512", [128, 512]),
                                        ("d128-512x2", [128, 512, 128, 512])])
def test_parse_structure(text, dims):
    assert parse_structure(text) == dims


def test_bad_structure_is_rejected():
    with pytest.raises(RisbenchError, match="d128-512"):
        parse_structure("128_512")


def full_head(**options) -> SADLRHead:
    with torch.device("meta"):  # parameter counts only: no memory, no init time
        return sadlr_head(channels=512, text_dim=768, **options)


@pytest.mark.parametrize("structure, millions", [("d128", 34.0), ("d256", 67.6), ("d64-256", 25.6),
                                                 ("d512", 134.9), ("d128-512", 67.6), ("d128-512x2", 134.9)])
def test_head_parameters_per_table4b_variant(structure, millions):
    assert round(count_params(full_head(structure=structure))["total"] / 1e6, 1) == millions


def test_parameters_do_not_grow_with_iterations():
    counts = {n: count_params(full_head(iterations=n))["total"] for n in (1, 2, 3, 4)}
    assert len(set(counts.values())) == 1


def test_same_modules_run_every_round():
    head = sadlr_head(iterations=4, structure="d16-32").eval()
    calls = {"layer0": 0, "layer1": 0, "classifier": 0}
    head.layers[0].register_forward_hook(lambda *a: calls.__setitem__("layer0", calls["layer0"] + 1))
    head.layers[1].register_forward_hook(lambda *a: calls.__setitem__("layer1", calls["layer1"] + 1))
    head.classifier.register_forward_hook(lambda *a: calls.__setitem__("classifier", calls["classifier"] + 1))
    rounds = head(*head_inputs())
    assert len(rounds) == 4 and all(r.shape == (2, 2, 6, 6) for r in rounds)
    assert calls == {"layer0": 4, "layer1": 4, "classifier": 4}


# --- the dynamic convolution and the query ---

def test_dynamic_conv_equals_a_grouped_conv_with_the_generated_kernels():
    torch.manual_seed(0)
    layer = DynamicConv(32, 32, 16).eval()
    y, query = torch.randn(3, 32, 5, 7), torch.randn(3, 32)
    tokens = y.flatten(2).transpose(1, 2)
    out = layer(tokens, query)
    kernel = layer.kernel(query)                                          # (B, in, out)
    weight = kernel.transpose(1, 2).reshape(3 * 16, 32, 1, 1)             # one group per sample
    grouped = F.conv2d(y.reshape(1, 3 * 32, 5, 7), weight, groups=3).reshape(3, 16, 35).transpose(1, 2)
    assert torch.allclose(out, F.relu(layer.norm(grouped)), atol=1e-5)
    assert not torch.allclose(layer(tokens, query + 1.0), out)


def test_samples_are_independent_in_eval_mode():
    head = sadlr_head(structure="d16-32").eval()
    y, words, mask, sentence = head_inputs()
    out = head(y, words, mask, sentence)
    y2 = y.clone()
    y2[1] = torch.randn_like(y2[1])
    out2 = head(y2, words, mask, sentence)
    assert torch.allclose(out[-1][0], out2[-1][0], atol=1e-6) and not torch.allclose(out[-1][1], out2[-1][1])


def test_sentence_query_ignores_padded_words():
    head = sadlr_head().eval()
    _, words, mask, _ = head_inputs()
    changed = words.clone()
    changed[0, 3:] = 100.0
    assert torch.equal(head.sentence(masked_mean(changed, mask)), head.sentence(masked_mean(words, mask)))
    assert torch.allclose(masked_mean(words, mask)[0], words[0, :3].mean(0))


def test_object_pooling_and_query_update():
    y, _, _, _ = head_inputs(batch_size=3)
    tokens = y.flatten(2).transpose(1, 2)                                 # (3, 36, 32)
    forced = torch.zeros(3, 36, dtype=torch.bool)
    forced[0, :10] = True                                                  # some pixels
    forced[2] = True                                                       # all pixels; sample 1: none
    previous = torch.stack([torch.zeros(3, 36), forced.float() * 2 - 1], 1).reshape(3, 2, 6, 6)
    head = sadlr_head()
    obj = head.pool_object(tokens, previous)
    assert torch.allclose(obj[0], tokens[0, :10].mean(0), atol=1e-6)
    assert torch.equal(obj[1], torch.zeros(32))                            # empty mask -> O = 0, no NaN
    assert torch.allclose(obj[2], tokens[2].mean(0), atol=1e-6)
    query = torch.randn(3, 32)
    assert torch.allclose(head.update_query(query, obj), query + obj)
    assert torch.equal(sadlr_head(query_update="replace").update_query(query, obj), obj)


def test_first_round_needs_no_previous_mask_and_later_rounds_use_it():
    head = sadlr_head(iterations=2, structure="d16-32").eval()
    inputs = head_inputs()
    one = sadlr_head(iterations=1, structure="d16-32").eval()
    one.load_state_dict(head.state_dict())
    rounds = head(*inputs)
    assert torch.allclose(rounds[0], one(*inputs)[0])
    assert not torch.allclose(rounds[0], rounds[1])


def test_detach_object_stops_gradient_through_the_pooled_vector():
    y, words, mask, sentence = head_inputs()
    grads = {}
    for detach in (False, True):
        head = sadlr_head(iterations=2, structure="d16-32", detach_object=detach)
        yy = y.clone().requires_grad_()
        torch.manual_seed(0)
        head(yy, words, mask, sentence)[1].sum().backward()
        grads[detach] = yy.grad.clone()
    assert not torch.allclose(grads[False], grads[True])


# --- losses and inference ---

@pytest.mark.parametrize("n, weights", [(1, [1.0]), (2, [0.3, 0.7]), (3, [0.15, 0.15, 0.7]),
                                        (4, [0.1, 0.1, 0.1, 0.7])])
def test_round_weights_follow_the_rule(n, weights):
    assert sadlr_head(iterations=n).loss_weights == pytest.approx(weights)


def test_explicit_loss_weights_and_their_length():
    assert sadlr_head(iterations=2, loss_weights=[0.4, 0.6]).loss_weights == [0.4, 0.6]
    with pytest.raises(RisbenchError, match="2 weights for 3"):
        sadlr_head(iterations=3, loss_weights=[0.4, 0.6])


def test_total_loss_is_the_weighted_sum_of_per_round_dice():
    model = tiny()
    batch = make_batch()
    out = model(batch)
    losses = model.loss(out, batch)
    per_round = [dice_loss(F.interpolate(r, size=(64, 64), mode="bilinear", align_corners=True), batch["mask"])
                 for r in out["logits"]]
    assert torch.isclose(losses["loss"], 0.15 * per_round[0] + 0.15 * per_round[1] + 0.7 * per_round[2])
    assert [losses[f"dice_round{i}"] for i in (1, 2, 3)] == pytest.approx([p.item() for p in per_round])


def test_dice_is_zero_for_a_perfect_and_one_for_an_inverted_prediction():
    gt = torch.zeros(2, 1, 16, 16)
    gt[:, :, 4:12, 4:12] = 1
    perfect = torch.cat([1 - gt, gt], 1) * 40 - 20
    assert dice_loss(perfect, gt) < 1e-3
    assert dice_loss(perfect.flip(1), gt) > 0.99


def test_inference_uses_the_last_round_only():
    model = tiny()
    out = model(make_batch())
    fg = model.mask_logits(out)
    last = F.interpolate(out["logits"][-1], size=(64, 64), mode="bilinear", align_corners=True)
    assert torch.allclose(fg, last[:, 1:2] - last[:, :1], atol=1e-6)
    out["logits"][0] = out["logits"][0] + 100.0
    assert torch.equal(model.mask_logits(out), fg)


# --- composition (Table 3 / 4a) ---

@pytest.mark.parametrize("options", [dict(head="none"), dict(head_options=dict(iterations=0))])
def test_no_head_is_exactly_the_base_model(options):
    model = tiny(**options)
    assert model.head is None and model.base.classifier is not None
    torch.manual_seed(0)
    base = build_model("lavt", VOCAB, text=TEXT, vision=VISION, channels=32, loss=dict(name="dice")).eval()
    assert set(model.state_dict()) == {f"base.{k}" for k in base.state_dict()}
    base.load_state_dict({k.removeprefix("base."): v for k, v in model.state_dict().items()})
    batch = make_batch()
    ours, theirs = model(batch), base(batch)
    assert torch.equal(ours["logits"][0], theirs["logits"][0])
    assert torch.equal(model.loss(ours, batch)["loss"], base.loss(theirs, batch)["loss"])


def test_a_head_replaces_the_base_classifier():
    model = tiny()
    assert model.base.classifier is None and not any(k.startswith("base.classifier") for k in model.state_dict())


@pytest.mark.parametrize("base", ["lavt", "lts", "vlt"])
@pytest.mark.parametrize("head", ["none", "cgan", "sadlr"])
def test_every_base_and_head_trains_end_to_end(base, head):
    model = tiny(base, head).train()
    batch = make_batch()
    out = model(batch)
    assert len(out["logits"]) == (1 if head == "none" else 3)
    assert all(r.shape == (2, 2, 16, 16) for r in out["logits"])
    loss = model.loss(out, batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert model.mask_logits(out).shape == (2, 1, 64, 64)


def test_bf16_autocast_runs_on_cpu():
    model = tiny()
    batch = make_batch()
    out, loss = bf16_forward_and_loss(model, batch)
    assert torch.isfinite(loss) and loss.dtype == torch.float32


def test_unknown_base_or_head_is_rejected():
    with pytest.raises(Exception, match="cris"):
        tiny(base="cris")
    with pytest.raises(RisbenchError, match="query_update"):
        tiny(head_options=dict(query_update="average"))


# --- MACs at 480 px (Table 3 FLOPs: fvcore convention, 1 multiply-add = 1 FLOP = our MAC) ---

def head_macs(head: torch.nn.Module) -> float:
    y, words = torch.randn(1, 512, 120, 120), torch.randn(1, 20, 768)
    mask = torch.ones(1, 20, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), explicit_attention(head), counter:
        head.eval()(y, words, mask, words.mean(1))
    return counter.get_total_flops() / 2


@pytest.fixture(scope="module")
def default_head():
    torch.manual_seed(0)
    return sadlr_head(512, 768, iterations=4)


def test_sadlr_head_adds_6_1_gmacs_at_480(default_head):
    default_head.iterations = 3
    macs = head_macs(default_head)
    assert abs(macs / 6.1e9 - 1) < 0.05, macs / 1e9                        # Table 3: 203.5 - 197.4
    default_head.iterations = 4
    per_round = head_macs(default_head) - macs
    assert abs(per_round / 1.97e9 - 1) < 0.02, per_round / 1e9


def test_cgan_head_adds_about_10_gmacs_at_480():
    torch.manual_seed(0)
    node = compose_config(["model=sadlr", "model/head=cgan", "scale=paper"]).model.head
    macs = head_macs(instantiate_node(node, _convert_="all")(channels=512, text_dim=768))
    assert abs(macs / 10.05e9 - 1) < 0.05, macs / 1e9                      # Table 3: +10.0 / +10.1 / +10.1


@pytest.fixture(scope="module", params=["lts", "vlt"])
def base_480(request):
    torch.manual_seed(0)
    model = build_model("sadlr", 30522, [f"model/base={request.param}", "model/head=none"],
                        base=dict(text=dict(pretrained=False), vision=dict(pretrained=False, img_size=480)))
    batch = {"image": torch.randn(1, 3, 480, 480), "tokens": torch.randint(1, 30522, (1, 20)),
             "attention_mask": torch.ones(1, 20, dtype=torch.long)}
    shapes = {}
    model.base.decoder.register_forward_hook(lambda m, a, out: shapes.update(Y=out.shape))
    return request.param, count_macs(model, batch)[0], shapes


@pytest.mark.slow
def test_lts_and_vlt_bases_are_near_table3_size(base_480):
    """Approximate bases, sized to Table 3 (LTS 133.3 G, VLT 142.6 G); Y at (512, H/4, W/4) as for LAVT."""
    name, macs, shapes = base_480
    assert abs(macs / {"lts": 133.3e9, "vlt": 142.6e9}[name] - 1) < 0.05, macs / 1e9
    assert tuple(shapes["Y"]) == (1, 512, 120, 120)
