"""Fixtures of the data-layer tests; the builders live in tests/fixtures.py."""

from __future__ import annotations

import pytest

from risbench.data.tokenizers import build_tokenizer
from tests.fixtures import make_refer, write_words


@pytest.fixture
def refcoco_root(tmp_path):
    """A paths.data_dir holding the tiny refcoco-like dataset (polygons, unc splits)."""
    make_refer(tmp_path, "refcoco", "unc")
    return tmp_path


@pytest.fixture
def word_tokenizer(tmp_path):
    return build_tokenizer("glove", write_words(tmp_path / "words.txt"), max_length=8)
