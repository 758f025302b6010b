"""Hugging Face BERT, Llama and T5 built from small configs (no download). Needs `transformers` (the
`bench` extra). Each trains with its own loss from `labels`.

memtrace benchmarks/models/hf_zoo.py:llama --input input_ids=2x64:int64 --input labels=2x64:int64
"""

from __future__ import annotations

from torch import nn


def bert(
    layers: int = 2, hidden: int = 128, heads: int = 4, vocab: int = 1000, positions: int = 256
) -> nn.Module:
    """BertForMaskedLM: masked-language-model loss from `labels` shaped like `input_ids`."""
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        vocab_size=vocab,
        max_position_embeddings=positions,
    )
    return BertForMaskedLM(config)


def llama(
    layers: int = 2,
    hidden: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 1000,
    positions: int = 256,
) -> nn.Module:
    """LlamaForCausalLM with grouped-query attention (`kv_heads` < `heads`), no KV cache."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=int(8 * hidden / 3),
        vocab_size=vocab,
        max_position_embeddings=positions,
        use_cache=False,
    )
    return LlamaForCausalLM(config)


def t5(layers: int = 2, hidden: int = 128, heads: int = 4, vocab: int = 1000) -> nn.Module:
    """T5ForConditionalGeneration (encoder and decoder): the decoder's inputs shift right from `labels`."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        num_layers=layers,
        num_decoder_layers=layers,
        d_model=hidden,
        d_kv=hidden // heads,
        d_ff=4 * hidden,
        num_heads=heads,
        vocab_size=vocab,
        use_cache=False,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    return T5ForConditionalGeneration(config)
