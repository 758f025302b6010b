"""Losses whose kernels allocate more than their meta kernels say.

`mse_loss` with a reduction (aten/src/ATen/native/Loss.cpp, structured; the same on CPU and CUDA):
`TORCH_META_FUNC(mse_loss)` builds a binary TensorIterator, which allocates the output at the broadcast
shape of input and target, then `resize_({})` makes it a scalar and keeps the storage: the loss a step holds
is as large as its input. `TORCH_IMPL_FUNC(mse_loss_out)` computes the elementwise squared error into a
second tensor of that shape and reduces it into the output (`mean_out`, on the CPU a sum and an in-place
division with a scalar, which books 8 + 4 bytes), then frees it. PyTorch's Python meta kernel returns a
4-byte scalar. Checked against the CPU allocator in tests/test_rules_loss.py.
"""

from __future__ import annotations

from typing import Any

import torch

from memtrace.tracer.devices import Workspace, rule

_MEAN = 1


def _mse(device: str, args: Any, kwargs: Any) -> Workspace | None:
    a, b = args[0], args[1]
    reduction = args[2] if len(args) > 2 else kwargs.get("reduction", _MEAN)
    if reduction == 0:
        return None
    nbytes = torch.broadcast_shapes(a.shape, b.shape).numel() * torch.promote_types(a.dtype, b.dtype).itemsize
    ws = Workspace(output_nbytes=nbytes)
    ws.outputs()
    ws.alloc(nbytes)
    if device == "cpu" and reduction == _MEAN:
        ws.alloc(8)  # div_'s wrapped scalar
        ws.alloc(4)
    return ws


@rule("cpu", "aten.mse_loss.default")
def _mse_cpu(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    return _mse("cpu", args, kwargs)


@rule("cuda", "aten.mse_loss.default")
def _mse_cuda(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    return _mse("cuda", args, kwargs)
