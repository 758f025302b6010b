"""A small Llama fine-tuned as LLM users do, from a config (no download): its decoder Linears quantized
by bitsandbytes (4-bit nf4/fp4, double quantization, or LLM.int8) through transformers'
`replace_with_bnb_linear`, PEFT LoRA (or DoRA) adapters on top, `prepare_model_for_kbit_training` as QLoRA
recipes call it. Needs `transformers`, `bitsandbytes` and `peft` (the `finetune` extra).

memtrace benchmarks/models/hf_qlora.py:build --input input_ids=1x128:int64 --device cpu --optimizer adamw
"""

from __future__ import annotations

import torch
from torch import nn

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
STORAGE = {**DTYPES, "uint8": torch.uint8}


def build(
    layers: int = 2,
    hidden: int = 256,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 688,
    vocab: int = 1024,
    quant: str | None = "nf4",
    double_quant: bool = False,
    compute_dtype: str = "bfloat16",
    rank: int = 8,
    dora: bool = False,
    kbit: bool = True,
    checkpointing: bool = False,
    reentrant: bool = False,
    device: str = "",
    save: str = "",
    embed: bool = False,
    adapters: int = 1,
    int8_threshold: float = 6.0,
    quant_storage: str = "uint8",
) -> nn.Module:
    """`quant` is nf4, fp4, int8 (LLM.int8) or none (LoRA on bf16 weights); `kbit` calls
    `prepare_model_for_kbit_training` (fp32 norms and embeddings, input gradients) with `checkpointing`;
    `device` moves the model there before the adapters are added (bitsandbytes quantizes then), as DoRA
    needs: its weight norm is taken from the quantized weight. `save` names modules trained in full beside the
    adapters (`modules_to_save`, comma-separated), `embed` puts an adapter on the embeddings too, `adapters`
    adds that many adapters, all active at once. `quant_storage` is bitsandbytes' `bnb_4bit_quant_storage`:
    the dtype the packed 4-bit weights are stored as (FSDP-QLoRA recipes set bfloat16, the dtype FSDP's
    mixed precision keeps, so FSDP shards them as bf16 elements)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        vocab_size=vocab,
        use_cache=False,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config).to(DTYPES[compute_dtype])
    if quant is not None and quant != "none":  # `--arg quant=none` parses as None
        storage = STORAGE[quant_storage]
        model = _quantized(model, quant, double_quant, DTYPES[compute_dtype], int8_threshold, storage)
    if device:
        model = model.to(device)
    if kbit:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": reentrant},
        )
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=targets + (["embed_tokens"] if embed else []),
        lora_dropout=0.0,
        use_dora=dora,
        modules_to_save=[m for m in save.split(",") if m] or None,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    names = ["default"] + [f"extra{i}" for i in range(1, adapters)]
    for name in names[1:]:
        peft_model.add_adapter(name, lora)
    if adapters > 1:
        peft_model.base_model.set_adapter(names)  # every adapter active (and trained) at once
    return peft_model


def _quantized(
    model: nn.Module,
    quant: str,
    double_quant: bool,
    compute: torch.dtype,
    threshold: float,
    storage: torch.dtype = torch.uint8,
) -> nn.Module:
    """The decoder Linears replaced as transformers does at load (`lm_head` kept); their weights copied in,
    quantized when the model moves to its device (`.to(device)`), as bitsandbytes does."""
    from transformers import BitsAndBytesConfig
    from transformers.integrations import replace_with_bnb_linear

    if quant == "int8":
        bnb_config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold)
    else:
        bnb_config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=storage,
        )
    weights = {name: m.weight for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    model = replace_with_bnb_linear(model, modules_to_not_convert=["lm_head"], quantization_config=bnb_config)
    model.is_loaded_in_4bit = quant != "int8"
    model.is_loaded_in_8bit = quant == "int8"
    for name, module in model.named_modules():
        if name in weights and type(module) is not nn.Linear:
            param = type(module.weight)
            module.weight = param(weights[name].data, requires_grad=False, **_param_args(module.weight))
    return model


def _param_args(weight: nn.Parameter) -> dict[str, object]:
    keys = ("blocksize", "compress_statistics", "quant_type", "quant_storage", "module", "has_fp16_weights")
    return {k: getattr(weight, k) for k in keys if k in vars(weight)}
