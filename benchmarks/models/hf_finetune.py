"""Public models' shapes fine-tuned with PEFT, from a config (no download, the weights on meta): Llama-2-7B,
Llama-3-8B, Llama-3.2-3B and phi-1.5, with LoRA or QLoRA (bitsandbytes 4-bit weights, `hf_qlora.py`'s
quantization) on the layers a recipe names. Needs `transformers`, `bitsandbytes` and `peft`.

memtrace benchmarks/models/hf_finetune.py:build --arg shape=llama2-7b --arg quant=nf4 \
    --input input_ids=1x2048:int64 --input labels=1x2048:int64 --optimizer adamw --gpu rtx4090
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

# The configs of the public checkpoints (their config.json), as keyword arguments of the config class.
SHAPES: dict[str, dict[str, object]] = {
    "llama2-7b": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
    "llama3-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
    },
    "llama3.2-3b": {
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
    },
    "phi-1.5": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "vocab_size": 51200,
        "max_position_embeddings": 2048,
        "partial_rotary_factor": 0.5,
    },
}
ALL_LINEAR = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def build(
    shape: str = "llama2-7b",
    layers: int = 0,
    quant: str = "none",
    double_quant: bool = False,
    rank: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    targets: str = ALL_LINEAR,
    adapter_dtype: str = "float32",
    kbit: bool = False,
    checkpointing: bool = False,
    reentrant: bool = False,
    act: str = "",
) -> nn.Module:
    """`shape` names a public model (SHAPES), `layers` cuts its depth when not 0 (tests); bf16 weights, or
    4-bit (`quant` nf4 or fp4, bf16 compute) on the decoder Linears as transformers quantizes at load.
    LoRA of `rank` and `alpha` on `targets` (comma-separated module names). `adapter_dtype` float32 is
    PEFT's default (`autocast_adapter_dtype=True`); bfloat16 keeps the adapters in the base dtype as
    litgpt's `bf16-true` does. `kbit` calls `prepare_model_for_kbit_training` (fp32 norms and embeddings)
    with `checkpointing` (non-reentrant unless `reentrant`). `act` replaces the MLP's activation
    (`gelu_pytorch_tanh`: one fused GELU, as litgpt's phi runs it, instead of Hugging Face's `gelu_new`)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: one of {', '.join(SHAPES)}")
    model = _base(shape, layers, act)
    if quant != "none":
        model = _sibling("hf_qlora")._quantized(model, quant, double_quant, torch.bfloat16, 6.0)
    if kbit:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": reentrant},
        )
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=[t for t in targets.split(",") if t],
        lora_dropout=dropout,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    if adapter_dtype != "float32":
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.data = param.data.to(DTYPES[adapter_dtype])
    return peft_model


def _sibling(name: str) -> ModuleType:
    """A builder module of this directory, loaded from its file (memtrace loads builders by path)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _base(shape: str, layers: int, act: str) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    kind = "phi" if shape.startswith("phi") else "llama"
    config = AutoConfig.for_model(kind, **SHAPES[shape], use_cache=False, attn_implementation="sdpa")
    if layers:
        config.num_hidden_layers = layers
    if act:
        config.hidden_act = act
    model: nn.Module = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model
