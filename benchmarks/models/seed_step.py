"""A user's own training step for the seed CNN, written for a GPU: bf16 autocast, cross entropy, clipping.

memtrace benchmarks/models/seed_cnn.py:build --input 8x3x144x256 --step benchmarks/models/seed_step.py:step

memtrace calls it as `step(model, inputs, optimizer)`, twice, on the meta device; `autocast("cuda")` applies
to the simulated device and `.cuda()` stays on meta.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def step(model: nn.Module, inputs: tuple[torch.Tensor, ...], optimizer: torch.optim.Optimizer) -> None:
    (images,) = inputs
    images = images.cuda(non_blocking=True)
    labels = torch.zeros(images.shape[0], dtype=torch.long, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
