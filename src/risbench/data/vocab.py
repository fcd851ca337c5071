"""``python -m risbench.data vocab data=<name> [out=PATH] [min_count=N]``: a word-level vocabulary.

ReSTR (and other GloVe-word models) embed words of a vocabulary built from the training expressions:
``<pad>`` (id 0), ``<unk>``, then every word seen at least ``min_count`` times in the training split,
split the way the ``glove`` tokenizer splits. Default output: ``<weights_dir>/restr/words_<dataset>.txt``,
where conf/model/restr.yaml looks for it. An existing file is never overwritten.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from risbench.config import CONFIG_ERRORS, compose_config, config_error_message, instantiate_node, split_options
from risbench.data.tokenizers import glove_tokenize
from risbench.errors import RisbenchError, check_can_create


def training_words(datamodule, min_count: int = 1) -> list[str]:
    """The vocabulary of the training split's expressions, ``<pad>`` and ``<unk>`` first."""
    counts = Counter()
    for ref in datamodule.annotations.in_split(datamodule.train_split):
        for sentence in ref.sentences:
            counts.update(glove_tokenize(sentence.text))
    words = sorted(word for word, count in counts.items() if count >= min_count and word not in ("<pad>", "<unk>"))
    return ["<pad>", "<unk>", *words]


def positive_count(text: str) -> int:
    """``min_count=`` as an integer of at least 1 (0 or less would keep nothing out)."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise RisbenchError(f"min_count={text!r} is not a whole number of at least 1; e.g. min_count=2")
    return count


def write_new(out: Path, text: str) -> None:
    """Write ``text`` to a new file ``out``, its folders made; a failed write is one message."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("x", encoding="utf-8") as file:
            file.write(text)
    except OSError as error:
        raise RisbenchError(f"cannot write the vocabulary to {out}: {error.strerror or error}; "
                            "pass out= a path in a folder you can write") from error


def main(argv: list[str]) -> int:
    options, overrides = split_options(argv, {"out": None, "min_count": "1"})
    try:
        min_count = positive_count(options["min_count"])
        cfg = compose_config(overrides)
        datamodule = instantiate_node(cfg.data, _recursive_=False)
        datamodule.prepare_data()
        out = Path(options["out"] or Path(cfg.paths.weights_dir) / "restr" / f"words_{datamodule.dataset}.txt")
        if out.exists():
            raise RisbenchError(f"{out} exists already; pass out=OTHER_PATH (existing files are never overwritten)")
        check_can_create(out, "out")
        words = training_words(datamodule, min_count)
        if len(words) == 2:
            raise RisbenchError(f"no word of {datamodule.dataset}'s {datamodule.train_split} split is seen "
                                f"{min_count} times or more; lower min_count")
        write_new(out, "\n".join(words) + "\n")
    except RisbenchError as error:
        print(f"risbench data vocab: {error}", file=sys.stderr)
        return 2
    except CONFIG_ERRORS as error:  # an interpolation that does not resolve
        print(f"risbench data vocab: {config_error_message(error)}", file=sys.stderr)
        return 2
    print(f"{len(words)} words ({datamodule.dataset} {datamodule.train_split}) written to {out}")
    return 0
