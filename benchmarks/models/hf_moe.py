"""Small mixture-of-experts causal LMs from configs (no download): HF Mixtral and Qwen2-MoE. Needs
`transformers`. `experts` picks HF's expert implementation: eager (a loop over the experts hit, routed by
`nonzero`/`where`) or grouped (`torch._grouped_mm`). Token counts per expert depend on the data: memtrace
chooses them by `--assume moe.routing=balanced|worst` or takes them from `--assume moe.tokens=...`.

memtrace benchmarks/models/hf_moe.py:mixtral --input input_ids=2x64:int64 --device cpu
memtrace benchmarks/models/hf_moe.py:qwen2_moe --arg experts=grouped --input input_ids=2x64:int64 --amp bf16
"""

from __future__ import annotations

from torch import nn


def mixtral(
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 4,  # = heads: memtrace runs CPU attention with GQA on the math path
    intermediate: int = 128,
    experts_count: int = 4,
    top_k: int = 2,
    vocab: int = 256,
    experts: str = "eager",
) -> nn.Module:
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        num_local_experts=experts_count,
        num_experts_per_tok=top_k,
        vocab_size=vocab,
        max_position_embeddings=1024,
        use_cache=False,
        attn_implementation="sdpa",
    )
    config._experts_implementation = experts
    return MixtralForCausalLM(config)


def qwen2_moe(
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 4,  # = heads: memtrace runs CPU attention with GQA on the math path
    intermediate: int = 128,
    experts_count: int = 4,
    top_k: int = 2,
    vocab: int = 256,
    experts: str = "eager",
) -> nn.Module:
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    config = Qwen2MoeConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        moe_intermediate_size=intermediate // 2,
        shared_expert_intermediate_size=intermediate,
        num_experts=experts_count,
        num_experts_per_tok=top_k,
        vocab_size=vocab,
        max_position_embeddings=1024,
        use_cache=False,
        attn_implementation="sdpa",
    )
    config._experts_implementation = experts
    return Qwen2MoeForCausalLM(config)
