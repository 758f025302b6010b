"""A sample that holds N images: a small ViT encodes each 336x336 image into 576 patch tokens, a projector
pools them 2x2 (144 tokens per image, as LLaVA-style models shrink them), and a fusion transformer attends
over all N images' tokens of a sample at once before a classification head. Input `BxNx3x336x336`.

memtrace benchmarks/models/multi_image.py:build --input 2x4x3x336x336 --loss ce --gpu a100-80gb
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """Pre-norm transformer block with `F.scaled_dot_product_attention` (the GPU's attention kernel)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, d)
        x = x + self.proj(a)
        return x + self.mlp(self.norm2(x))


class MultiImageModel(nn.Module):
    def __init__(
        self, dim: int, depth: int, fusion_depth: int, heads: int, patch: int, image: int, classes: int
    ):
        super().__init__()
        self.grid = image // patch
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim))
        self.encoder = nn.Sequential(*(Block(dim, heads) for _ in range(depth)))
        self.projector = nn.Linear(dim, dim)
        self.fusion = nn.Sequential(*(Block(dim, heads) for _ in range(fusion_depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, n = images.shape[:2]
        t = self.patch(images.flatten(0, 1)).flatten(2).transpose(1, 2) + self.pos  # (B*N, 576, D)
        t = self.encoder(t)
        d = t.shape[-1]
        grid = t.transpose(1, 2).reshape(b * n, d, self.grid, self.grid)
        t = self.projector(F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2))  # (B*N, 144, D)
        t = self.fusion(t.reshape(b, n * t.shape[1], d))  # every image's tokens of a sample together
        return self.head(self.norm(t).mean(1))


def build(
    dim: int = 768,
    depth: int = 4,
    fusion_depth: int = 2,
    heads: int = 12,
    patch: int = 14,
    image: int = 336,
    classes: int = 1000,
) -> nn.Module:
    """The model for `(B, N, 3, image, image)` inputs; about 18M parameters with the defaults."""
    return MultiImageModel(dim, depth, fusion_depth, heads, patch, image, classes)
