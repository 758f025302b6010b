"""One `F.scaled_dot_product_attention` call whose q, k, v are parameters: its training step holds the SDPA
kernel's saved tensors and backward buffers against the GPU (`benchmarks/gpu/verify_cases.py`).

memtrace verify benchmarks/models/sdpa_probe.py:build --arg heads=32 --arg seq=4096 --input 1:bfloat16 \
    --optimizer sgd --device cuda
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SdpaProbe(nn.Module):
    """q {B, H, Sq, D}, k and v {B, KV, Sk, D}; the forward adds the (1,) input so the step has an input."""

    def __init__(
        self,
        batch: int,
        heads: int,
        kv_heads: int,
        seq: int,
        kv_seq: int,
        dim: int,
        dtype: torch.dtype,
        causal: bool,
        mask: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.q = nn.Parameter(torch.randn(batch, heads, seq, dim, dtype=dtype))
        self.k = nn.Parameter(torch.randn(batch, kv_heads, kv_seq, dim, dtype=dtype))
        self.v = nn.Parameter(torch.randn(batch, kv_heads, kv_seq, dim, dtype=dtype))
        self.causal, self.dropout, self.gqa = causal, dropout, kv_heads != heads
        self.register_buffer("mask", torch.ones(seq, kv_seq, dtype=torch.bool).tril() if mask else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            self.q,
            self.k,
            self.v,
            attn_mask=self.mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal,
            enable_gqa=self.gqa,
        )
        return out + x


def build(
    batch: int = 1,
    heads: int = 32,
    kv_heads: int = 0,
    seq: int = 4096,
    kv_seq: int = 0,
    dim: int = 128,
    dtype: str = "bfloat16",
    causal: bool = True,
    mask: bool = False,
    dropout: float = 0.0,
) -> nn.Module:
    """`kv_heads` / `kv_seq` 0 mean the same as the query's."""
    return SdpaProbe(
        batch,
        heads,
        kv_heads or heads,
        seq,
        kv_seq or seq,
        dim,
        getattr(torch, dtype),
        causal and not mask,
        mask,
        dropout,
    )
