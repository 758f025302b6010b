"""A small Llama causal LM from a config (no download): grouped-query SDPA, RMSNorm, SwiGLU. Needs
`transformers` (the `bench` extra). The default is the Llama-style block of benchmarks/results/cuda-facts.md.

memtrace benchmarks/models/hf_llama.py:build --input input_ids=1x1024:int64 --amp bf16 --device cuda
"""

from __future__ import annotations

from torch import nn


def build(
    layers: int = 2,
    hidden: int = 512,
    heads: int = 8,
    kv_heads: int = 2,
    intermediate: int = 1376,
    vocab: int = 4096,
    positions: int = 8192,
) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        vocab_size=vocab,
        max_position_embeddings=positions,
        use_cache=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)
