"""GloVe words + a bidirectional recurrent network (M3Dec-CNN, the MCN/VLT lineage of text encoders).

``(tokens, attention_mask) -> (words (B,T,H), sentence (B,H))``: the word table (GloVe-initialised by
`load_pretrained`, frozen by default) feeds ``nn.GRU`` (or ``nn.LSTM``) over packed sequences, so every
direction stops at the last real word of each expression; the two directions are summed (VLT), per word
and for the final states. Padded positions of ``words`` are exactly zero and never influence the rest.
Tokens must be right-padded (``tokenizer.padding_side=right``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from risbench.errors import RisbenchError
from risbench.models.common.text import TextEncoder
from risbench.models.common.text.glove import init_from_word_vectors

RNN_TYPES = {"gru": nn.GRU, "lstm": nn.LSTM}


class GloveRNN(TextEncoder):
    """Word table -> bidirectional GRU/LSTM with the directions summed; ``out_dim`` = ``hidden_size``."""

    def __init__(self, vocab_size: int, embed_dim: int = 300, hidden_size: int = 256, rnn_type: str = "gru",
                 bidirectional: bool = True, freeze_embedding: bool = True, glove_path: str | None = None,
                 glove_vocab_path: str | None = None, vocab_path: str | None = None, oov_std: float = 0.1):
        super().__init__()
        if rnn_type not in RNN_TYPES:
            raise RisbenchError(f"model.text.rnn_type={rnn_type!r} is not one of {sorted(RNN_TYPES)}")
        self.out_dim = hidden_size
        self.glove_path, self.glove_vocab_path, self.vocab_path, self.oov_std = (glove_path, glove_vocab_path,
                                                                                 vocab_path, oov_std)
        self.pretrained = bool(glove_path)
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)  # <pad> = 0, a zero row
        self.embed.weight.requires_grad_(not freeze_embedding)
        self.rnn = RNN_TYPES[rnn_type](embed_dim, hidden_size, batch_first=True, bidirectional=bidirectional)

    def load_pretrained(self) -> None:
        if not self.vocab_path:
            raise RisbenchError("model.text.glove_path needs model.text.vocab_path (the tokenizer vocabulary)")
        init_from_word_vectors(self.embed, self.glove_path, self.vocab_path, self.glove_vocab_path, self.oov_std)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = tokens.shape
        lengths = attention_mask.sum(1)
        if not torch.equal(attention_mask.bool(), torch.arange(T, device=tokens.device) < lengths[:, None]):
            raise RisbenchError("the GloVe + RNN text encoder needs right-padded tokens (real words first).\n"
                                "  how to fix: set tokenizer.padding_side=right")
        # an expression without a word runs one step on the zero <pad> vector instead of failing to pack
        packed = pack_padded_sequence(self.embed(tokens), lengths.clamp(min=1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, state = self.rnn(packed)
        hidden = state[0] if isinstance(state, tuple) else state            # (directions, B, H); LSTM: h_n
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, directions * H), 0 at pads
        words = out.view(B, T, -1, self.out_dim).sum(2)                     # directions summed (VLT)
        return words, hidden.sum(0)
