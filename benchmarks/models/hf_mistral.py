"""A small Mistral causal LM from a config (no download): grouped-query SDPA with a sliding window. Needs
`transformers` (the `bench` extra). With a window shorter than the generation, the dynamic cache keeps only
the window's keys and values.

memtrace benchmarks/models/hf_mistral.py:build --input input_ids=1x8:int64 --mode generate --max-new-tokens 24
"""

from __future__ import annotations

from torch import nn


def build(
    layers: int = 2,
    hidden: int = 256,
    heads: int = 8,
    kv_heads: int = 2,
    intermediate: int = 512,
    vocab: int = 1000,
    positions: int = 4096,
    window: int = 16,
) -> nn.Module:
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        vocab_size=vocab,
        max_position_embeddings=positions,
        sliding_window=window,
        attn_implementation="sdpa",
    )
    return MistralForCausalLM(config)
