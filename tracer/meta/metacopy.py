"""A real module copied to the meta device without copying its weights.

Every parameter and buffer, and every tensor a module keeps as a plain attribute, is replaced by an empty meta
tensor of the same shape, strides and dtype before `copy.deepcopy` runs, so no weight is ever copied; tied
weights stay tied and `requires_grad` is kept. The original module is left as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def _held(module: nn.Module) -> Iterator[torch.Tensor]:
    yield from (p for p in module._parameters.values() if p is not None)
    yield from (b for b in module._buffers.values() if b is not None)
    yield from (v for v in vars(module).values() if isinstance(v, torch.Tensor))


def _meta_like(t: torch.Tensor) -> torch.Tensor:
    meta = torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device="meta")
    if isinstance(t, nn.Parameter):
        return nn.Parameter(meta, requires_grad=t.requires_grad)
    return meta.requires_grad_(t.requires_grad) if t.is_leaf and t.is_floating_point() else meta


def to_meta(model: nn.Module) -> nn.Module:
    """The module's meta twin: same structure, hooks and attributes, tensors empty on meta."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for t in _held(module):
            if id(t) not in memo:
                memo[id(t)] = _meta_like(t)
    return copy.deepcopy(model, memo)
