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
from risbench.errors import RisbenchError


def training_words(datamodule, min_count: int = 1) -> list[str]:
    """The vocabulary of the training split's expressions, ``<pad>`` and ``<unk>`` first."""
    counts = Counter()
    for ref in datamodule.annotations.in_split(datamodule.train_split):
        for sentence in ref.sentences:
            counts.update(glove_tokenize(sentence.text))
    words = sorted(word for word, count in counts.items() if count >= min_count and word not in ("<pad>", "<unk>"))
    return ["<pad>", "<unk>", *words]


def main(argv: list[str]) -> int:
    options, overrides = split_options(argv, {"out": None, "min_count": "1"})
    try:
        cfg = compose_config(overrides)
        datamodule = instantiate_node(cfg.data, _recursive_=False)
        datamodule.prepare_data()
        out = Path(options["out"] or Path(cfg.paths.weights_dir) / "restr" / f"words_{datamodule.dataset}.txt")
        if out.exists():
            raise RisbenchError(f"{out} exists already; pass out=OTHER_PATH (existing files are never overwritten)")
        words = training_words(datamodule, int(options["min_count"]))
    except RisbenchError as error:
        print(f"risbench data vocab: {error}", file=sys.stderr)
        return 2
    except CONFIG_ERRORS as error:  # an interpolation that does not resolve
        print(f"risbench data vocab: {config_error_message(error)}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(words) + "\n", encoding="utf-8")
    print(f"{len(words)} words ({datamodule.dataset} {datamodule.train_split}) written to {out}")
    return 0
