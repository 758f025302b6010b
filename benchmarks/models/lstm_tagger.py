"""A sequence tagger: token embedding, a bidirectional LSTM, a per-token linear head (one tag per token).

memtrace benchmarks/models/lstm_tagger.py:build --input 8x64:int64 --loss ce
"""

from __future__ import annotations

import torch
from torch import nn


class LSTMTagger(nn.Module):
    def __init__(self, vocab: int, dim: int, hidden: int, layers: int, tags: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, tags)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.lstm(self.embed(tokens))[0]  # (B, T, 2H)
        return self.head(out)  # (B, T, tags): `--loss ce` takes the last dim as the classes


def build(vocab: int = 1000, dim: int = 64, hidden: int = 128, layers: int = 2, tags: int = 17) -> nn.Module:
    return LSTMTagger(vocab, dim, hidden, layers, tags)
