"""BERT text encoder: shapes, LAVT's and LGFormer's trainable subsets, loading a local Hugging Face directory."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForPreTraining, BertModel

from risbench.errors import MissingFileError, RisbenchError
from risbench.models.common.text import masked_mean
from risbench.models.common.text.bert import BertTextEncoder

SMALL = dict(num_layers=4, hidden_size=32, num_heads=2, intermediate_size=64, max_positions=32)
VOCAB = 60


def tokens_and_mask(batch: int = 2, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 4:] = 0
    return tokens * mask, mask


def test_forward_returns_last_hidden_state_and_its_masked_mean():
    enc = BertTextEncoder(VOCAB, pretrained=False, **SMALL).eval()
    tokens, mask = tokens_and_mask()
    hidden, sentence = enc(tokens, mask)
    assert hidden.shape == (2, 7, 32) and enc.out_dim == 32
    assert torch.allclose(sentence[1], hidden[1, :4].mean(0)) and torch.equal(sentence, masked_mean(hidden, mask))
    assert torch.allclose(hidden, enc.bert(input_ids=tokens, attention_mask=mask).last_hidden_state)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_dropout_knob_sets_both_bert_dropouts(dropout):
    enc = BertTextEncoder(VOCAB, pretrained=False, dropout=dropout, **SMALL).train()
    assert enc.bert.config.hidden_dropout_prob == enc.bert.config.attention_probs_dropout_prob == dropout
    tokens, mask = tokens_and_mask()
    # training-mode outputs are deterministic exactly when dropout is off
    assert torch.equal(enc(tokens, mask)[0], enc(tokens, mask)[0]) == (dropout == 0.0)


def trainable_names(enc: BertTextEncoder) -> set[str]:
    return {name for name, p in enc.named_parameters() if p.requires_grad}


def test_lavt_trains_only_encoder_layers_before_the_last_two():
    enc = BertTextEncoder(VOCAB, pretrained=False, trainable="lavt", **SMALL)
    names = trainable_names(enc)
    assert names and all(name.startswith(("bert.encoder.layer.0.", "bert.encoder.layer.1.")) for name in names)
    assert any(name.startswith("bert.encoder.layer.1.") for name in names)
    # 12-layer BERT: layers 0-9 train, embeddings and 10-11 stay (LAVT's optimizer groups)
    enc12 = BertTextEncoder(VOCAB, pretrained=False, trainable="lavt", num_layers=12, hidden_size=16,
                            num_heads=2, intermediate_size=16)
    layers = {int(n.split(".")[3]) for n in trainable_names(enc12)}
    assert layers == set(range(10))


def test_encoder_mode_trains_every_encoder_layer_and_no_embedding():
    enc12 = BertTextEncoder(VOCAB, pretrained=False, trainable="encoder", num_layers=12, hidden_size=16,
                            num_heads=2, intermediate_size=16)
    names = trainable_names(enc12)
    assert all(name.startswith("bert.encoder.layer.") for name in names)
    assert {int(n.split(".")[3]) for n in names} == set(range(12))  # LGFormer's optimizer: all 12 layers
    assert not any(p.requires_grad for p in enc12.bert.embeddings.parameters())


@pytest.mark.parametrize("mode, expected", [("all", True), ("none", False)])
def test_all_and_none(mode, expected):
    enc = BertTextEncoder(VOCAB, pretrained=False, trainable=mode, **SMALL)
    assert {p.requires_grad for p in enc.parameters()} == {expected}


def test_unknown_trainable_mode_is_rejected():
    with pytest.raises(ValueError, match="trainable"):
        BertTextEncoder(VOCAB, pretrained=False, trainable="some", **SMALL)


def hf_config() -> BertConfig:
    return BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=32)


@pytest.mark.parametrize("saved_as", [BertModel, BertForPreTraining])  # bare, and the hub's "bert.*" layout
def test_loads_a_local_save_pretrained_directory(tmp_path, saved_as):
    torch.manual_seed(1)
    source = saved_as(hf_config())
    source.save_pretrained(tmp_path)
    reference = source if saved_as is BertModel else source.bert
    enc = BertTextEncoder(VOCAB, pretrained=True, pretrained_path=str(tmp_path), **SMALL).eval()
    tokens, mask = tokens_and_mask()
    before = enc(tokens, mask)[0]
    enc.load_pretrained()
    after = enc(tokens, mask)[0]
    reference.eval()
    assert not torch.allclose(before, after)
    assert torch.allclose(after, reference(input_ids=tokens, attention_mask=mask).last_hidden_state, atol=1e-6)
    assert torch.equal(enc.bert.embeddings.word_embeddings.weight, reference.embeddings.word_embeddings.weight)


def test_missing_directory_says_what_to_put_there(tmp_path):
    enc = BertTextEncoder(VOCAB, pretrained=True, pretrained_path=str(tmp_path / "bert-base-uncased"), **SMALL)
    with pytest.raises(MissingFileError, match="save_pretrained"):
        enc.load_pretrained()


def test_architecture_mismatch_is_explained(tmp_path):
    BertModel(hf_config()).save_pretrained(tmp_path)
    enc = BertTextEncoder(VOCAB, pretrained=True, pretrained_path=str(tmp_path),
                          **{**SMALL, "num_layers": 2})
    with pytest.raises(RisbenchError, match="num_hidden_layers=4"):
        enc.load_pretrained()
