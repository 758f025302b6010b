"""A small GPT-2 causal LM built from a config (no download). Needs `transformers` (the `bench` extra).

memtrace benchmarks/models/hf_gpt2.py:build --input 4x128:int64 --layers
"""

from __future__ import annotations

from torch import nn


def build(
    layers: int = 2, hidden: int = 128, heads: int = 4, vocab: int = 1000, positions: int = 256
) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=layers, n_embd=hidden, n_head=heads, vocab_size=vocab, n_positions=positions, use_cache=False
    )  # a KV cache is inference state: training keeps none
    return GPT2LMHeadModel(config)
