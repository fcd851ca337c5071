"""GloVe word tables read from local files, and ReSTR's word-level text encoder (`GloveTransformer`).

Two file forms, both mapped onto the tokenizer's vocabulary (row ``i`` = token id ``i``):

* the standard GloVe text file (``glove.840B.300d.txt``: one ``word v1 ... vD`` per line), streamed so
  only the vocabulary's words are kept;
* a saved ``.npy`` matrix: either already aligned with the tokenizer (``V`` rows, no word list) or with
  its own word list (``vectors_vocab``: one word per line, row order) that is matched by word.

Words without a vector get ``N(0, oov_std)`` rows; the padding row (id 0) is zero.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from risbench.data.tokenizers import read_vocab
from risbench.errors import MissingFileError, RisbenchError
from risbench.models.common.attention import Block, init_linear, sinusoidal_positions
from risbench.models.common.text import TextEncoder, masked_mean

GLOVE_HINT = ("download glove.840B.300d.zip from https://nlp.stanford.edu/projects/glove/, unzip it and point "
              "the config at the .txt file (or at a saved .npy matrix), or set the path to null for a "
              "randomly initialised table")
log = logging.getLogger("risbench")


def _read_glove_text(path: Path, words: list[str], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Stream a GloVe text file; exact-case matches win over lowercase matches."""
    index = {w: i for i, w in enumerate(words)}
    vectors = np.zeros((len(words), dim), dtype=np.float32)
    found = np.zeros(len(words), dtype=np.int8)  # 0 none, 1 lowercase match, 2 exact match
    vector_lines = 0
    with path.open("r", encoding="utf-8", errors="ignore") as handle:
        for number, line in enumerate(handle, 1):
            parts = line.rstrip().rsplit(" ", dim)  # some 840B words contain spaces
            if len(parts) != dim + 1:
                continue
            vector_lines += 1
            word = parts[0]
            if word in index:
                i, quality = index[word], 2
            elif word.lower() in index:
                i, quality = index[word.lower()], 1
            else:
                continue
            if found[i] < quality:
                try:
                    vectors[i] = np.asarray(parts[1:], dtype=np.float32)
                except ValueError:
                    raise RisbenchError(f"word vectors at {path}, line {number}: {word!r} is not followed by "
                                        f"{dim} numbers") from None
                found[i] = quality
    if not vector_lines:  # e.g. a 50-d file for a 300-d table: every line would be skipped
        raise RisbenchError(f"word vectors at {path}: no line holds a word and {dim} numbers.\n"
                            f"  how to fix: give a {dim}-d GloVe text file, or set the table's width to the file's")
    return vectors, found > 0


def _read_matrix(path: Path) -> np.ndarray:
    """A saved float matrix; a pickle inside a .npy is refused (it could run code), never loaded."""
    try:
        return np.load(path).astype(np.float32)
    except (ValueError, OSError) as exc:
        reason = "it holds pickled objects, not numbers" if "pickle" in str(exc) else str(exc)
        raise RisbenchError(f"word vectors at {path} could not be read as a .npy matrix ({reason}).\n"
                            f"  how to fix: {GLOVE_HINT}") from None


def load_word_vectors(path: str | Path, words: list[str], dim: int,
                      vectors_vocab: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectors for ``words`` from a GloVe ``.txt`` or a ``.npy`` matrix: ``(V, dim)`` and a ``(V,)`` found mask."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError("word vectors (GloVe)", path, GLOVE_HINT)
    if path.suffix == ".npy":
        matrix = _read_matrix(path)
        if matrix.ndim != 2 or matrix.shape[1] != dim:
            raise RisbenchError(f"word vectors at {path} have shape {matrix.shape}, expected (rows, {dim})")
        if vectors_vocab is None:
            if matrix.shape[0] != len(words):
                raise RisbenchError(
                    f"word vectors at {path} have {matrix.shape[0]} rows but the tokenizer has {len(words)} "
                    "words.\n  how to fix: also give the matrix's own word list (model.text.glove_vocab_path)")
            return torch.from_numpy(matrix), torch.ones(len(words), dtype=torch.bool)
        own_words = read_vocab(vectors_vocab, require_specials=False)
        if len(own_words) != matrix.shape[0]:
            raise RisbenchError(f"word vectors at {path} have {matrix.shape[0]} rows but their word list "
                                f"{vectors_vocab} has {len(own_words)} lines: one word per row, in row order")
        rows = {w: i for i, w in enumerate(own_words)}
        vectors = np.zeros((len(words), dim), dtype=np.float32)
        found = np.array([w in rows for w in words])
        for i, word in enumerate(words):
            if word in rows:
                vectors[i] = matrix[rows[word]]
        return torch.from_numpy(vectors), torch.from_numpy(found)
    vectors, found = _read_glove_text(path, words, dim)
    return torch.from_numpy(vectors), torch.from_numpy(found)


@torch.no_grad()
def init_from_word_vectors(embedding: nn.Embedding, path: str | Path, vocab_path: str | Path,
                           vectors_vocab: str | Path | None = None, oov_std: float = 0.1) -> float:
    """Fill ``embedding`` from word vectors; returns the fraction of vocabulary words found."""
    words = read_vocab(vocab_path)
    if len(words) != embedding.num_embeddings:
        raise RisbenchError(f"vocabulary {vocab_path} has {len(words)} words but the embedding table has "
                            f"{embedding.num_embeddings} rows; the tokenizer and the vocabulary file disagree")
    vectors, found = load_word_vectors(path, words, embedding.embedding_dim, vectors_vocab)
    if not found.any():
        raise RisbenchError(f"none of the {len(words)} words of {vocab_path} has a vector in {path}: they "
                            "share no word (is model.text.vocab_path the tokenizer's vocabulary?)")
    log.info("word vectors: %d of %d vocabulary words found in %s", int(found.sum()), len(words), path)
    weight = torch.randn_like(embedding.weight) * oov_std
    weight[found] = vectors[found].to(weight.dtype)
    if embedding.padding_idx is not None:
        weight[embedding.padding_idx] = 0
    embedding.weight.copy_(weight)
    return found.float().mean().item()


class GloveTransformer(TextEncoder):
    """Word table (GloVe-initialised by `load_pretrained`) + fixed sinusoidal positions -> Blocks -> LN.

    ReSTR's language encoder: (B, T) ids -> (B, T, dim). ``pad_mode``: ``zero`` = padded slots are not
    masked as keys (ReSTR's code zeroes them only after the fusion projection); ``mask`` = key masks.
    """

    def __init__(self, vocab_size: int, dim: int, depth: int, num_heads: int, mlp_dim: int, norm_first: bool,
                 max_length: int, pad_mode: str, glove_path: str | None = None, glove_vocab_path: str | None = None,
                 vocab_path: str | None = None, oov_std: float = 0.1):
        super().__init__()
        if pad_mode not in ("zero", "mask"):
            raise RisbenchError(f"model.text.pad_mode={pad_mode!r} is not one of ['mask', 'zero']")
        self.out_dim, self.pad_mode = dim, pad_mode
        self.glove_path, self.glove_vocab_path, self.vocab_path, self.oov_std = (glove_path, glove_vocab_path,
                                                                                 vocab_path, oov_std)
        self.pretrained = bool(glove_path)
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)  # <pad> = 0, a zero row
        self.register_buffer("pos", sinusoidal_positions(max_length, dim), persistent=False)
        self.blocks = nn.ModuleList(
            [Block(dim, num_heads, mlp_dim=mlp_dim, norm_first=norm_first) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks.apply(init_linear)

    def load_pretrained(self) -> None:
        if not self.vocab_path:
            raise RisbenchError("model.text.glove_path needs model.text.vocab_path (the tokenizer vocabulary)")
        init_from_word_vectors(self.embed, self.glove_path, self.vocab_path, self.glove_vocab_path, self.oov_std)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tokens.shape[1] > self.pos.shape[0]:
            raise RisbenchError(f"{tokens.shape[1]} tokens exceed model.text.max_length={self.pos.shape[0]}")
        key_padding_mask = attention_mask == 0 if self.pad_mode == "mask" else None
        x = self.embed(tokens) + self.pos[: tokens.shape[1]].to(self.embed.weight.dtype)  # PE on every slot
        for block in self.blocks:
            x = block(x, key_padding_mask=key_padding_mask)
        words = self.norm(x)
        return words, masked_mean(words, attention_mask)
