"""Shared-RIS fidelity checks (spec papers/single_encoder.md §7): token counts, parameter and MAC counts at
paper size, the heads' wiring, the loss, the paper protocol, BEiT-3's tokenizer ids and text table."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from timm.layers import Mlp
from torch.utils.flop_counter import FlopCounterMode

from risbench.data.tokenizers import build_tokenizer
from risbench.errors import MissingFileError, RisbenchError
from risbench.evaluation import Protocol
from risbench.metrics import ReferringSegmentationMetrics
from risbench.models.common.attention import explicit_attention
from risbench.models.shared_ris import MaskHead, SharedRIS
from risbench.profiling import count_macs, count_params
from risbench.tasks.common import build_net
from tests.helpers import compose_config

M = 1e6
G = 1e9


def config(*overrides: str, scale: str = "tiny", **nodes):
    cfg = compose_config(["model=shared_ris", f"scale={scale}", "data=synthref", *overrides])
    OmegaConf.set_struct(cfg, False)
    return OmegaConf.merge(cfg, {"model": nodes})


def tiny_model(*overrides: str, vocab_size: int = 50, **nodes) -> SharedRIS:
    torch.manual_seed(0)
    return build_net(config(*overrides, **nodes), vocab_size).eval()


def paper_model(vocab_size: int = 64_002, **nodes) -> SharedRIS:
    """The paper-size network on the meta device (shapes only: counts without memory)."""
    cfg = config(scale="paper", **nodes)
    with torch.device("meta"):
        return build_net(cfg, vocab_size)


def batch(batch_size: int = 2, length: int = 6, size: int = 64, seed: int = 0, vocab_size: int = 50) -> dict:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, vocab_size, (batch_size, length), generator=generator)
    mask = torch.ones(batch_size, length, dtype=torch.long)
    mask[1:, 4:] = 0  # the other expressions are 2 tokens shorter (right padding)
    return {"image": torch.randn(batch_size, 3, size, size, generator=generator), "tokens": tokens,
            "attention_mask": mask, "mask": (torch.rand(batch_size, 1, size, size, generator=generator) > 0.7).float()}


def params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def macs(module, *args, **kwargs) -> float:
    """MACs (FLOPs / 2, attention matmuls included) of one call, on meta tensors."""
    counter = FlopCounterMode(display=False)
    with explicit_attention(module), counter:
        module(*args, **kwargs)
    return counter.get_total_flops() / 2


# ----------------------------------------------------------------------------- 1. token counts

def test_token_counts_through_the_model():
    model = tiny_model()
    seen = {}
    model.fpn.register_forward_hook(lambda m, args, out: seen.update(fpn=out))
    model.decoder.head.register_forward_pre_hook(lambda m, args: seen.update(decoder=args[0]))
    b = batch()
    with torch.no_grad():
        enc = model.encoder(b["image"], b["tokens"], b["attention_mask"] == 0, layers=model.stages)
        out = model(b)
    n = (64 // 8) ** 2  # 8x8 patches at tiny scale
    assert enc["split"] == n + 1 and all(h.shape == (2, n + 1 + 6, 64) for h in enc["layers"].values())
    assert seen["fpn"].shape == seen["decoder"].shape == (2, n + 1 + 6, 64)
    assert out["logits"].shape == (2, 1, 32, 32)                   # h/4: 4x the 8x8 token grid
    assert model.mask_logits(out).shape == (2, 1, 64, 64)          # the input size


@pytest.mark.slow
def test_full_size_model_builds_counts_and_runs_at_480():
    torch.manual_seed(0)
    model = build_net(config(scale="paper", encoder={"pretrained": False}), 64_002).eval()
    b = batch(1, 22, 480, vocab_size=64_002)
    total, by_module = count_macs(model, b)
    assert count_params(model)["total"] == 221_528_064 + 6_830_592 + 8_660_992
    assert 152 * G < total < 157 * G and abs(by_module["decoder"] - 50.1 * G) < 1 * G
    seen = {}
    model.fpn.register_forward_hook(lambda m, args, out: seen.update(fpn=out))
    with torch.no_grad():
        out = model(b)
    assert seen["fpn"].shape == (1, 901 + 22, 512)
    assert out["logits"].shape == (1, 1, 120, 120) and model.mask_logits(out).shape == (1, 1, 480, 480)
    assert torch.isfinite(out["logits"]).all()


# ----------------------------------------------------------------------------- 2-3. parameters

def test_backbone_parameters_at_480_and_224():
    model = paper_model()
    assert params(model.encoder) == 221_528_064
    assert params(paper_model(img_size=224).encoder) == 220_987_392
    assert model.encoder.text_embed.weight.shape == (64_010, 768)
    assert model.encoder.encoder.embed_positions.A.weight.shape == (903, 768)


@pytest.mark.parametrize(("stages", "literal", "paper"), [([6, 12], 3_415_552, 4), ([4, 8, 12], 5_123_072, 6),
                                                          ([3, 6, 9, 12], 6_830_592, 8)])
def test_fpn_parameters(stages, literal, paper):
    fpn = paper_model(fpn={"stages": stages}).fpn
    assert params(fpn) == literal                    # Eq. 6-7 read literally (spec §2.2)
    assert abs(params(fpn) - paper * M) <= 1.3 * M   # the paper's rounded 4 / 6 / 8M (spec §6.4)


def test_decoder_parameters():
    counts = [params(paper_model(decoder={"num_layers": n}).decoder) for n in range(4)]
    assert counts[:2] == [5_508_608, 8_660_992]
    assert abs(counts[0] - 5 * M) <= 0.6 * M and abs(counts[1] - 9 * M) <= 0.6 * M
    assert counts[2] - counts[1] == counts[3] - counts[2] == 3_152_384
    # the other fusion modules at the sizes the spec derives (Table VII(b) 8M / 37M; Grounding-DINO ~40M)
    assert params(paper_model(fpn={"fusion": "cross"}).fpn) == 6_830_592
    assert 39 * M < params(paper_model(fpn={"fusion": "bidirectional"}).fpn) < 41 * M
    # Table V stand-ins, sized to the reported 44M and 94M
    assert abs(params(paper_model(decoder={"type": "cgformer"}).decoder) - 44 * M) < 1 * M
    assert abs(params(paper_model(decoder={"type": "dmmi"}).decoder) - 94 * M) < 4 * M
    assert params(paper_model(decoder={"type": "none"}).decoder) == counts[0]


# ----------------------------------------------------------------------------- 4. MACs

def meta_tokens(model: SharedRIS, length: int = 22):
    hidden = {j: torch.empty(1, 901 + length, 768, device="meta") for j in model.stages or [12]}
    return hidden, torch.empty(1, 901 + length, 512, device="meta")


def test_gmacs_at_480_with_20_words():
    model = paper_model()
    hidden, z = meta_tokens(model)
    decoder = [macs(paper_model(decoder={"num_layers": n}).decoder, z, 901, None) for n in range(4)]
    assert abs(decoder[0] - 46 * G) < 1 * G and abs(decoder[1] - 50 * G) < 1 * G  # spec: 46.3 / 50.1
    assert all(abs(b - a - 3.8 * G) < 0.1 * G for a, b in zip(decoder, decoder[1:]))
    assert abs(macs(model.fpn, hidden, 901, None) - 9.8 * G) < 0.2 * G
    image = torch.empty(1, 3, 480, 480, device="meta")
    tokens = torch.zeros(1, 22, dtype=torch.long, device="meta")
    encoder = macs(model.encoder, image, tokens, None, layers=model.stages)
    assert abs(encoder - 94.9 * G) < 1 * G  # spec (fvcore, m = 20): 94.9G


# ----------------------------------------------------------------------------- 5. fusion through the model

def test_text_changes_the_mask_and_padding_changes_nothing():
    model = tiny_model()
    b = batch()
    with torch.no_grad():
        logits = model(b)["logits"]
        other = {**b, "tokens": b["tokens"].clone()}
        other["tokens"][:, 1] = (other["tokens"][:, 1] + 5) % 46 + 4
        assert (model(other)["logits"] - logits).abs().amax(dim=(1, 2, 3)).min() > 1e-4
        padded = {**b, "tokens": b["tokens"].clone()}
        padded["tokens"][1, 4:] = 7  # other ids where expression 2 is padding
        torch.testing.assert_close(model(padded)["logits"], logits, atol=0, rtol=0)
        # extra padding columns are cut: the same logits as the batch padded to its longest expression
        wide = {**b, "tokens": F.pad(b["tokens"], (0, 5), value=1), "attention_mask": F.pad(b["attention_mask"], (0, 5))}
        torch.testing.assert_close(model(wide)["logits"], logits, atol=1e-6, rtol=0)
        alone = {key: value[1:] for key, value in b.items()}
        alone["tokens"], alone["attention_mask"] = alone["tokens"][:, :4], alone["attention_mask"][:, :4]
        torch.testing.assert_close(model(alone)["logits"], logits[1:], atol=1e-5, rtol=0)


def test_left_padded_text_is_a_user_error():
    model = tiny_model()
    b = batch()
    b["attention_mask"] = b["attention_mask"].flip(1)
    with pytest.raises(RisbenchError, match="padding_side=right"):
        model(b)


# ----------------------------------------------------------------------------- 6. head wiring

def test_one_mlp_per_decoder_layer_and_none_in_the_fpn():
    model = tiny_model(decoder={"num_layers": 2})
    for layer in model.decoder.layers:
        assert sum(isinstance(m, Mlp) for m in layer.modules()) == 1
    assert not any(isinstance(m, Mlp) for m in model.fpn.modules())


def test_mask_head_drops_v_cls_and_reads_the_text_start_token():
    torch.manual_seed(0)
    head = MaskHead(16, grid=4).eval()
    split = 1 + 16
    u = torch.randn(2, split + 5, 16)
    with torch.no_grad():
        base = head(u, split)
        for index, changes in ((0, False), (split, True), (split + 1, False), (3, True)):
            other = u.clone()
            other[:, index] += 1.0
            moved = (head(other, split) - base).abs().max() > 1e-4
            assert moved == changes, f"token {index}"
    assert base.shape == (2, 1, 16, 16)


# ----------------------------------------------------------------------------- 7. loss and threshold

def test_loss_is_two_bce_plus_half_dice_at_the_logit_resolution():
    model = tiny_model()
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 4, 4, generator=generator)
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, :4, :4] = 1
    mask[1, :, 2:, 1:] = 1
    target = mask[:, :, ::2, ::2]  # nearest downsampling keeps the even pixels
    p = logits.sigmoid()
    bce = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    dice = (1 - (2 * (p * target).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)).mean()
    out = model.loss({"logits": logits}, {"mask": mask})
    torch.testing.assert_close(out["loss"], 2.0 * bce + 0.5 * dice)
    torch.testing.assert_close(out["bce"], bce)
    model.loss_resolution = "input"
    assert not torch.isclose(model.loss({"logits": logits}, {"mask": mask})["loss"], out["loss"])


def test_paper_protocol_thresholds_probabilities_at_0_35():
    paper = compose_config(["model=shared_ris", "scale=paper"]).eval.paper
    assert (paper.threshold, paper.resolution, paper.prec_op) == (0.35, "original", ">")
    protocol = Protocol.from_config(paper, "eval.paper")
    model = tiny_model()
    probs = torch.tensor([0.34, 0.36, 0.5, 0.2]).reshape(1, 1, 2, 2)
    logits = model.mask_logits({"logits": torch.logit(probs).repeat_interleave(16, 2).repeat_interleave(16, 3),
                                "size": (32, 32)})
    b = {"image": torch.zeros(1, 3, 32, 32), "valid_box": torch.tensor([[0, 0, 32, 32]]),
         "orig_size": torch.tensor([[32, 32]]), "orig_masks": [torch.ones(32, 32, dtype=torch.bool)]}
    pred = protocol.scored_masks(logits, b)[0][0]
    assert not pred[:16, :12].any() and pred[:16, 20:32].all() and pred[16:, :12].all() and not pred[16:, 20:].any()


# ----------------------------------------------------------------------------- 8. metrics under the paper protocol

def test_paper_metrics_on_toy_masks():
    paper = compose_config(["model=shared_ris", "scale=paper"]).eval.paper
    metric = ReferringSegmentationMetrics(prec_thresholds=[0.5], **Protocol.from_config(paper, "p").metric_options())
    big = torch.zeros(20, 20, dtype=torch.bool)
    big[:10, :10] = True
    half_gt = torch.zeros(4, 4, dtype=torch.bool)
    half_gt[:, :2] = True
    half_pred = torch.zeros(4, 4, dtype=torch.bool)
    half_pred[:, :1] = True  # IoU exactly 0.5
    metric.update([big, half_pred], [big, half_gt])
    out = metric.compute()
    assert out["oIoU"].item() == pytest.approx(104 / 108) and out["mIoU"].item() == pytest.approx(0.75)
    assert out["prec@0.5"].item() == 0.5  # strict ">": the IoU of 0.5 does not count


# ----------------------------------------------------------------------------- 10. BEiT-3's tokenizer ids

@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    import sentencepiece

    folder = tmp_path_factory.mktemp("spm")
    corpus = folder / "corpus.txt"
    corpus.write_text("the man on the left\nthe red circle left of the blue square\n"
                      "a small star above the big box\nthe second hexagon from the right\n" * 30)
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "beit3"), vocab_size=30,
                                             model_type="unigram", minloglevel=2)
    return folder / "beit3.model"


def test_sentencepiece_ids_are_xlmr_ids(spm_model, tmp_path):
    """BEiT-3 tokenizes with transformers' XLMRobertaTokenizer over beit3.spm: risbench's ids are its ids."""
    import shutil

    from transformers import XLMRobertaTokenizer

    shutil.copy(spm_model, tmp_path / "sentencepiece.bpe.model")
    xlmr = XLMRobertaTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    ours = build_tokenizer("sentencepiece", spm_model, max_length=64, lowercase=False)
    texts = ["the man on the left", "The Red circle, left of a zebra!", "a small star above the big box"]
    ids, mask = ours(texts)
    assert ours.vocab_size == len(xlmr) and (ours.pad_id, xlmr.pad_token_id) == (1, 1)
    for row, text in enumerate(texts):
        assert ids[row][mask[row].bool()].tolist() == xlmr(text)["input_ids"]
    assert ids[0, 0] == 0 and ids[0, mask[0].sum() - 1] == 2 and ids[0, mask[0].sum():].eq(1).all()


def test_sentencepiece_tokens_drive_the_model(spm_model):
    tok = build_tokenizer("sentencepiece", spm_model, max_length=16, lowercase=False)
    ids, mask = tok(["the small star", "the second hexagon from the right"])
    model = tiny_model(vocab_size=tok.vocab_size)
    assert model.encoder.text_embed.weight.shape[0] == tok.vocab_size  # vocab_size null at tiny scale
    b = {"image": torch.randn(2, 3, 64, 64), "tokens": ids, "attention_mask": mask}
    with torch.no_grad():
        logits = model(b)["logits"]
        b["tokens"] = torch.where(mask.bool(), ids, torch.full_like(ids, 9))  # pads (id 1) are masked, not zero
        torch.testing.assert_close(model(b)["logits"], logits, atol=0, rtol=0)


def test_the_64010_row_text_table_takes_the_tokenizer_ids():
    # beit3.spm's XLM-R ids (its pieces + <pad>/<mask>, 64,002) fit the checkpoint's 64,010 rows
    assert paper_model(vocab_size=64_002).encoder.text_embed.weight.shape == (64_010, 768)
    assert paper_model(vocab_size=64_010).encoder.text_embed.weight.shape == (64_010, 768)
    with pytest.raises(RisbenchError, match="64011 ids but BEiT-3's text embedding has 64010 rows"):
        paper_model(vocab_size=64_011)
    assert paper_model(vocab_size=500, encoder={"vocab_size": None}).encoder.text_embed.weight.shape == (500, 768)


# ----------------------------------------------------------------------------- options, freezing, weights

def test_unused_parameters_are_frozen():
    model = tiny_model()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"encoder.vision_embed.mask_token", *(f"encoder.encoder.layer_norm.{w}.{p}" for w in "AB"
                                                           for p in ("weight", "bias"))}
    assert "encoder.encoder.layer_norm.A.weight" not in {
        name for name, p in tiny_model(fpn={"final_ln_on_last": True}).named_parameters() if not p.requires_grad}
    shallow = tiny_model(fpn={"stages": [3, 6]})
    assert not any(p.requires_grad for p in shallow.encoder.encoder.layers[6:].parameters())
    b = batch()
    model.train()
    model.loss(model(b), b)["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_final_ln_on_last_changes_the_last_stage():
    b = batch()
    with torch.no_grad():
        before = tiny_model()(b)["logits"]
        after = tiny_model(fpn={"final_ln_on_last": True})(b)["logits"]
    assert (before - after).abs().max() > 1e-4


def test_quarter_stages_for_null():
    assert tiny_model(fpn={"stages": None}).stages == [3, 6, 9, 12]
    assert paper_model(encoder={"size": "large"}, fpn={"stages": None}).stages == [6, 12, 18, 24]
    assert tiny_model(fpn={"stages": []}).stages == []


@pytest.mark.parametrize(("nodes", "message"), [
    ({"fpn": {"fusion": "gated"}}, "model.fpn.fusion"),
    ({"decoder": {"type": "mlp"}}, "model.decoder.type"),
    ({"decoder": {"fusion": "none"}}, "model.decoder.fusion"),
    ({"fpn": {"stages": [6, 3]}}, "model.fpn.stages"),
    ({"fpn": {"stages": [3, 13]}}, "model.fpn.stages"),
    ({"loss": {"resolution": "half"}}, "model.loss.resolution"),
    ({"max_text_length": 40}, "tokenizer.max_length=40"),
])
def test_bad_options_are_user_errors(nodes, message):
    with pytest.raises(RisbenchError, match=message):
        tiny_model(**nodes)


def test_pretrained_encoder_loads_through_the_model(tmp_path):
    model = tiny_model(encoder={"pretrained": True, "checkpoint": str(tmp_path / "beit3.pth")})
    with pytest.raises(MissingFileError, match="model.encoder.checkpoint"):
        model.load_pretrained()
    source = model.encoder.state_dict()
    release = {f"beit3.{key}": torch.randn_like(value) for key, value in source.items()}
    coarse = 4 * 4 + 3  # a 4x4 grid, as a 224 checkpoint is coarser than 480
    release["beit3.encoder.embed_positions.A.weight"] = torch.randn(coarse, 64)
    torch.save({"model": release}, tmp_path / "beit3.pth")
    model.load_pretrained()
    assert torch.equal(model.encoder.state_dict()["encoder.layers.5.self_attn.q_proj.B.weight"],
                       release["beit3.encoder.layers.5.self_attn.q_proj.B.weight"])
    assert model.encoder.encoder.embed_positions.A.weight.shape == (64 + 3, 64)
    assert torch.equal(model.encoder.encoder.embed_positions.A.weight[:3],
                       release["beit3.encoder.embed_positions.A.weight"][:3])
