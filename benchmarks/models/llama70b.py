"""A Llama-70B-shaped causal LM from a config, on the meta device (no download, nothing materialized).

80 layers, hidden 8192, 64 heads, 8 KV heads, intermediate 28672, vocab 128256 (Llama 3 70B). Needs
`transformers` (the `bench` extra). `layers=` shrinks the stack for quick runs.

memtrace benchmarks/models/llama70b.py:build --input input_ids=1x4096:int64 --input labels=1x4096:int64 \
    --dtype bf16 --optimizer adamw --device cuda --gpu h100-80gb
"""

from __future__ import annotations

from torch import nn


def build(layers: int = 80, vocab: int = 128256, positions: int = 131072) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        num_hidden_layers=layers,
        hidden_size=8192,
        num_attention_heads=64,
        num_key_value_heads=8,
        intermediate_size=28672,
        vocab_size=vocab,
        max_position_embeddings=positions,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)
