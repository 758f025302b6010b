"""A decoder's head read at the last position only, as `generate()`'s prefill reads it (Hugging Face's
`logits_to_keep=1`): token embedding, an MLP block, then the vocabulary head on `hidden[:, -1:, :]`, a view
whose batch stride does not fold into one matrix (ATen's `matmul` then takes its `bmm` path unless the
weight requires grad).

memtrace benchmarks/models/last_token_head.py:build --input 1x8:int64 --mode no_grad --amp bf16
"""

from __future__ import annotations

import torch
from torch import nn


class LastTokenHead(nn.Module):
    def __init__(self, vocab: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        x = x + self.down(torch.relu(self.up(x)))
        return self.head(x[:, -1:, :])  # (B, 1, vocab)


def build(vocab: int = 512, dim: int = 128, hidden: int = 256) -> nn.Module:
    return LastTokenHead(vocab, dim, hidden)
