"""Two small models for the data-parallel ground truth (benchmarks/dist_reference.py and its test):
a CNN with batch norm (DDP broadcasts its buffers before each forward) and a GPT-style transformer on SDPA.
Both have a first dimension that 2 ranks split unevenly (FSDP2's shards differ between ranks).

memtrace benchmarks/models/dist_models.py:cnn --input 8x3x32x32 --device cpu --ddp 2
memtrace benchmarks/models/dist_models.py:lm --input 4x64:int64 --device cpu --fsdp 2 --fsdp-wrap 'blocks.*'
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def cnn(width: int = 32, classes: int = 11) -> nn.Module:
    """conv-bn-relu stages, global average pooling, a linear head of `classes` (odd: uneven shards)."""
    return nn.Sequential(
        _conv_bn(3, width),
        _conv_bn(width, 2 * width, stride=2),
        _conv_bn(2 * width, 2 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, classes),
    )


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).flatten(2))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class LM(nn.Module):
    def __init__(self, vocab: int, dim: int, heads: int, layers: int, max_len: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos.weight[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def lm(vocab: int = 1001, dim: int = 128, heads: int = 4, layers: int = 2, max_len: int = 64) -> nn.Module:
    """A GPT-style decoder; the vocabulary (odd) gives the embedding and head uneven shards."""
    return LM(vocab, dim, heads, layers, max_len)
