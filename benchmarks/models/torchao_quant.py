"""A small MLP quantized or converted by torchao: int8 weight-only (`Int8WeightOnlyConfig`), int4
weight-only (`Int4WeightOnlyConfig`) through `quantize_`, or float8 training (`convert_to_float8_training`).
Needs `torchao`.

memtrace benchmarks/models/torchao_quant.py:build --arg scheme=float8 --input 64x256 --device cpu
"""

from __future__ import annotations

import torch
from torch import nn


def build(scheme: str = "int8wo", hidden: int = 256, depth: int = 2, dtype: str = "bfloat16") -> nn.Module:
    """`scheme` is int8wo, int4wo or float8; int8wo and int4wo quantize the Linears' weights (inference:
    run with --mode infer or no_grad), float8 swaps them for `Float8Linear` (training, master weights in
    `dtype`)."""
    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden)]
    model = nn.Sequential(*layers).to(torch_dtype)
    if scheme == "float8":
        from torchao.float8 import convert_to_float8_training

        return convert_to_float8_training(model)
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    configs = {"int8wo": Int8WeightOnlyConfig, "int4wo": Int4WeightOnlyConfig}
    quantize_(model, configs[scheme]())
    return model
