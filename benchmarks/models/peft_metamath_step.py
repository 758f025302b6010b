"""The training step of PEFT's MetaMathQA method comparison (method_comparison/MetaMathQA/run.py), as memtrace
runs a `--step`: the loss from the model's labels, backward, `clip_grad_norm_(1.0)`, AdamW's step.

memtrace benchmarks/models/hf_finetune.py:build --arg shape=llama3.2-3b --arg targets=q_proj,v_proj \
    --input input_ids=4x768:int64 --input labels=4x768:int64 --optimizer adamw:weight_decay=0.1 \
    --step benchmarks/models/peft_metamath_step.py:step --gpu l40s
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def step(model: nn.Module, inputs: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    outputs = model(**inputs)
    outputs.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
