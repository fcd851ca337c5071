"""Text encoders: one interface for every paper's text side, picked by config (``model.text._target_``).

``encoder(tokens (B,T), attention_mask (B,T)) -> (words (B,T,C), sentence (B,C))``; ``encoder.out_dim``
is C. Padded positions of ``words`` are whatever the encoder leaves there: models mask them with
``attention_mask``. Encoders are configured as ``_partial_`` nodes and built by the model with the
tokenizer's ``vocab_size``.

* `BertTextEncoder` (bert.py): BERT word features (LAVT, SADLR, LGFormer, M3Dec-Swin);
* `GloveTransformer` (glove.py): GloVe-initialised words + a small transformer (ReSTR);
* `GloveRNN` (gru.py): GloVe words + a bidirectional GRU over packed sequences (M3Dec-CNN);
* room for BEiT-3's shared text path (Shared-RIS).
"""

from __future__ import annotations

import torch
from torch import nn


def masked_mean(words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B,T,C) word features over the real tokens -> (B,C)."""
    m = word_mask.to(words.dtype)[:, :, None]
    return (words * m).sum(1) / m.sum(1).clamp(min=1)


class TextEncoder(nn.Module):
    """Base of the text encoders: subclasses set ``out_dim`` and implement `forward`."""

    out_dim: int

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
