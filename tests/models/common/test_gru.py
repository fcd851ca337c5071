"""GloVe + bidirectional RNN text encoder: packed sequences, summed directions, GloVe tables from files."""

from __future__ import annotations

import pytest
import torch

from risbench.errors import MissingFileError, RisbenchError
from risbench.models.common.text.gru import GloveRNN
from tests.fixtures import WORDS, write_words

VOCAB = 40


def right_padded(batch: int = 3, length: int = 8, lengths=(8, 5, 2), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(length)[None] < torch.tensor(lengths)[:, None]).long()
    return torch.randint(1, VOCAB, (batch, length), generator=g) * mask, mask


def encoder(**options) -> GloveRNN:
    torch.manual_seed(0)
    return GloveRNN(VOCAB, **{"embed_dim": 12, "hidden_size": 16, **options}).eval()


def test_bi_gru_at_the_paper_size_has_the_specs_parameter_count():
    enc = GloveRNN(VOCAB, embed_dim=300, hidden_size=256)
    assert sum(p.numel() for p in enc.rnn.parameters()) == 857_088
    assert enc.out_dim == 256 and not enc.embed.weight.requires_grad  # GloVe frozen by default


def test_words_and_sentence_equal_each_expression_encoded_alone():
    enc = encoder()
    tokens, mask = right_padded()
    words, sentence = enc(tokens, mask)
    assert words.shape == (3, 8, 16) and sentence.shape == (3, 16)
    for i, n in enumerate(mask.sum(1).tolist()):
        out, hidden = enc.rnn(enc.embed(tokens[i:i + 1, :n]))             # (1, n, 2H), (2, 1, H)
        forward, backward = out[0, :, :16], out[0, :, 16:]
        assert torch.allclose(words[i, :n], forward + backward, atol=1e-6)
        # final states: the forward direction at the last real word, the backward one at the first
        assert torch.allclose(sentence[i], hidden.sum(0)[0], atol=1e-6)
        assert torch.allclose(sentence[i], forward[n - 1] + backward[0], atol=1e-6)
        assert torch.equal(words[i, n:], torch.zeros(8 - n, 16))           # padded slots are exactly zero


def test_tokens_in_padded_slots_change_nothing():
    enc = encoder()
    tokens, mask = right_padded()
    other = tokens.clone()
    other[mask == 0] = torch.randint(1, VOCAB, (int((mask == 0).sum()),))
    assert not torch.equal(other, tokens)
    for a, b in zip(enc(tokens, mask), enc(other, mask)):
        assert torch.equal(a, b)


def test_left_padding_is_refused_with_the_fix():
    enc = encoder()
    tokens, mask = right_padded()
    with pytest.raises(RisbenchError, match="padding_side=right"):
        enc(tokens.flip(1), mask.flip(1))


def test_an_expression_without_words_does_not_break_packing():
    enc = encoder()
    tokens, mask = right_padded(lengths=(8, 0, 2))
    words, sentence = enc(tokens, mask)
    assert torch.isfinite(words).all() and torch.isfinite(sentence).all()


def test_lstm_and_one_direction():
    tokens, mask = right_padded()
    words, sentence = encoder(rnn_type="lstm")(tokens, mask)
    assert words.shape == (3, 8, 16) and sentence.shape == (3, 16)
    one = encoder(bidirectional=False)
    words, sentence = one(tokens, mask)
    assert torch.allclose(sentence[1], words[1, 4], atol=1e-6)             # the last real word of 5
    with pytest.raises(RisbenchError, match="rnn_type"):
        encoder(rnn_type="rnn")


def test_trainable_table_gets_gradients_and_frozen_table_none():
    tokens, mask = right_padded()
    for freeze in (True, False):
        enc = encoder(freeze_embedding=freeze).train()
        words, sentence = enc(tokens, mask)
        (words.sum() + sentence.sum()).backward()
        assert (enc.embed.weight.grad is None) == freeze
        assert enc.rnn.weight_ih_l0.grad is not None


def test_load_pretrained_fills_the_table_from_a_glove_text_file(tmp_path):
    vocab = write_words(tmp_path / "words.txt")
    glove = tmp_path / "glove.txt"
    glove.write_text("box 1 2 3\nLeft 4 5 6\nzebra 7 8 9\n")
    enc = GloveRNN(len(WORDS), embed_dim=3, hidden_size=4, glove_path=str(glove), vocab_path=str(vocab))
    assert enc.pretrained
    enc.load_pretrained()
    table = enc.embed.weight
    assert torch.equal(table[WORDS.index("box")], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(table[WORDS.index("left")], torch.tensor([4.0, 5.0, 6.0]))  # lowercase match
    assert torch.equal(table[0], torch.zeros(3)) and not table.requires_grad


def test_missing_glove_file_says_where_it_comes_from(tmp_path):
    enc = GloveRNN(len(WORDS), embed_dim=3, hidden_size=4, glove_path=str(tmp_path / "glove.840B.300d.txt"),
                   vocab_path=str(write_words(tmp_path / "words.txt")))
    with pytest.raises(MissingFileError, match="nlp.stanford.edu"):
        enc.load_pretrained()
    assert not GloveRNN(VOCAB, glove_path=None).pretrained
