"""bigcode/octocoder's shape (GPTBigCode, StarCoder's config: 40 layers, n_embd 6144, 48 heads with
multi-query attention, n_inner 24576, vocab 49152, 8192 positions, tied embeddings), built from a config (no
download), as Hugging Face's `llm_tutorial_optimization.md` loads it: bf16, or LLM.int8 / 4-bit weights
through bitsandbytes as `from_pretrained(load_in_8bit=True | load_in_4bit=True)` quantizes them (the other
weights in fp16, transformers' default for a quantized load; `hf_qlora.py`'s quantization). Needs
`transformers` (and `bitsandbytes` for `quant`).

memtrace benchmarks/models/hf_bigcode.py:build --input input_ids=1x20:int64 --mode generate \
    --max-new-tokens 60 --device cuda --gpu a100-80gb
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

OCTOCODER = {
    "n_layer": 40,
    "n_embd": 6144,
    "n_head": 48,
    "n_inner": 24576,
    "vocab_size": 49152,
    "n_positions": 8192,
    "multi_query": True,
    "tie_word_embeddings": True,
    "activation_function": "gelu_pytorch_tanh",
}  # and bos, eos and pad token 0 (octocoder's tokenizer; the tutorial passes pad_token_id=0)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def build(
    layers: int = 0,
    hidden: int = 0,
    heads: int = 0,
    inner: int = 0,
    vocab: int = 0,
    attn: str = "sdpa",
    quant: str = "none",
    dtype: str = "bfloat16",
) -> nn.Module:
    """octocoder's shape; `layers`, `hidden`, `heads`, `inner` and `vocab` shrink it when not 0 (tests).
    `attn` is the attention implementation (`sdpa`, `eager`); `quant` none, int8 (LLM.int8 with threshold
    0.0: its outlier columns depend on the activations' values, which meta does not have; a load's default is
    6.0) or fp4/nf4 (4-bit, fp32 compute as `load_in_4bit=True` defaults), the other weights then in fp16."""
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    shape = dict(OCTOCODER)
    for key, value in (("n_layer", layers), ("n_embd", hidden), ("n_head", heads), ("n_inner", inner)):
        shape[key] = value or shape[key]
    shape["vocab_size"] = vocab or shape["vocab_size"]
    tokens = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    config = GPTBigCodeConfig(**shape, **tokens, attn_implementation=attn)
    base = torch.float16 if quant != "none" else DTYPES[dtype]
    model: nn.Module = GPTBigCodeForCausalLM(config).to(base)
    if quant != "none":
        model = _sibling("hf_qlora")._quantized(model, quant, False, torch.float32, 0.0)
    return model


def _sibling(name: str) -> ModuleType:
    """A builder module of this directory, loaded from its file (memtrace loads builders by path)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
