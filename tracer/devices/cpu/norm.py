"""CPU LayerNorm: the copies and the reduction buffer its kernels make (aten/src/ATen/native/layer_norm.cpp,
aten/src/ATen/native/cpu/layer_norm_kernel.cpp).

Forward and backward take `input.expect_contiguous()` first: a permuted input (ConvNeXt's and SAM's
LayerNorm2d normalise a channels-last view of an NCHW map) is copied before the outputs exist and freed
when the kernel returns. The backward kernel reads `dY` contiguous too, and when it computes dgamma or dbeta
it sums them through a zeroed `{2, num_threads, N}` buffer of the input's dtype. Held against the CPU
allocator in tests/test_rules_norm.py.
"""

from __future__ import annotations

from typing import Any

import torch

from ...core.registry import Workspace, rule

aten = torch.ops.aten


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@rule("cpu", aten.native_layer_norm.default)
def _layer_norm(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    x = args[0]
    if x.is_contiguous():
        return None
    ws = Workspace()
    ws.alloc(_nbytes(x))
    ws.outputs()
    return ws


@rule("cpu", aten.native_layer_norm_backward.default)
def _layer_norm_backward(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    grad, x, normalized_shape, mask = args[0], args[1], args[2], args[7]
    ws = Workspace()
    if not x.is_contiguous():
        ws.alloc(_nbytes(x))
    ws.outputs()
    if mask[1] or mask[2]:
        n = 1
        for d in normalized_shape:
            n *= int(d)
        ws.alloc(2 * torch.get_num_threads() * n * x.element_size())
    if not grad.is_contiguous():
        ws.alloc(_nbytes(grad))
    return ws if len(ws.steps) > 1 else None
