"""A compiled MLP over tokens, trained on three sequence lengths in one step (docs/compile.md): the second
length recompiles with dynamic sizes, the third reuses that graph."""

from __future__ import annotations

import torch
from torch import nn


def build(dim: int = 64, hidden: int = 256) -> nn.Module:
    return torch.compile(nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)))


def lengths(model: nn.Module, batch: tuple[torch.Tensor, ...], optimizer: torch.optim.Optimizer) -> None:
    """A quarter, a half and the whole of the input's sequence, shortest first."""
    (x,) = batch
    for n in (x.shape[1] // 4, x.shape[1] // 2, x.shape[1]):
        model(x[:, :n].contiguous()).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
