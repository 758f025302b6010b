"""litgpt's fine-tuning step (litgpt/finetune/lora.py) on a Hugging Face model with PEFT adapters, as memtrace
runs a `--step`: the decoder's hidden states, the head applied in chunks of 128 positions
(`lm_head_chunk_size=128`), the shifted loss by `chunked_cross_entropy` (each chunk's cross entropy in the
logits' dtype, concatenated, averaged), backward, the optimizer's step.

memtrace benchmarks/models/hf_finetune.py:build --arg shape=phi-1.5 --arg targets=q_proj,v_proj \
    --input input_ids=1x1044:int64 --input labels=1x1044:int64 --optimizer adamw \
    --step benchmarks/models/litgpt_step.py:step --gpu a100-40gb
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

CHUNK = 128


def step(model: nn.Module, inputs: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
    causal = model.get_base_model()  # type: ignore[operator]
    ids, targets = inputs["input_ids"], inputs["labels"]
    hidden = causal.model(input_ids=ids).last_hidden_state
    logits = [causal.lm_head(chunk) for chunk in hidden.split(CHUNK, dim=1)]
    logits[-1] = logits[-1][..., :-1, :]
    targets = targets[..., 1:]
    rows = [chunk.reshape(-1, chunk.size(-1)) for chunk in logits]
    labels = [chunk.reshape(-1) for chunk in targets.split(CHUNK, dim=1)]
    losses = [
        F.cross_entropy(r, t, ignore_index=-100, reduction="none") for r, t in zip(rows, labels, strict=True)
    ]
    loss = torch.cat(losses).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
