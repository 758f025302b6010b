"""ATen kernels that CPU and CUDA run the same way, and what each allocates beyond its meta kernel.

- `F.scaled_dot_product_attention`: each device's patch swaps in its own kernel choice (`sdpa_replaced`).
- BLAS operands (`addmm_impl_cpu_`, CUDA's `prepare_matrix_for_cublas`): a matrix BLAS cannot read in place
  (row- or column-major with a leading dimension at least its size) is cloned contiguous inside the kernel,
  after the output exists, and freed when the kernel returns; the expanded (stride 0) gradient of `sum` is
  the common case.
- `mse_loss` with a reduction (aten/src/ATen/native/Loss.cpp, structured): `TORCH_META_FUNC(mse_loss)` builds
  a binary TensorIterator, which allocates the output at the broadcast shape of input and target, then
  `resize_({})` makes it a scalar and keeps the storage: the loss a step holds is as large as its input.
  `TORCH_IMPL_FUNC(mse_loss_out)` computes the squared error into a second tensor of that shape and reduces
  it into the output (`mean_out`; on the CPU a sum and an in-place division by a wrapped scalar, 8 + 4
  bytes), then frees it. PyTorch's Python meta kernel returns a 4-byte scalar. Held against the CPU
  allocator in tests/test_rules_loss.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from memtrace.tracer.devices import Workspace


def blas_ready(t: torch.Tensor) -> bool:
    rows, cols = t.shape
    s0, s1 = t.stride()
    return ((s1 == 1 or cols == 1) and s0 >= max(1, cols)) or ((s0 == 1 or rows == 1) and s1 >= max(1, rows))


def operand_copies(*mats: Any) -> Workspace | None:
    """The contiguous copies of the operands BLAS cannot read, after the output."""
    needed = [m.numel() * m.element_size() for m in mats if isinstance(m, torch.Tensor) and not blas_ready(m)]
    if not needed:
        return None
    ws = Workspace()
    ws.outputs()
    for nbytes in needed:
        ws.alloc(nbytes)
    return ws


_MEAN = 1


def mse_loss(device: str, args: Any, kwargs: Any) -> Workspace | None:
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


SdpaFn = Callable[..., torch.Tensor]


@contextmanager
def sdpa_replaced(wrap: Callable[[SdpaFn], SdpaFn]) -> Iterator[None]:
    """`F.scaled_dot_product_attention` (and its `torch._C._nn` twin) replaced by `wrap(original)`."""
    original = F.scaled_dot_product_attention
    wrapped = wrap(original)
    saved = (F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention)
    F.scaled_dot_product_attention = wrapped
    torch._C._nn.scaled_dot_product_attention = wrapped
    try:
        yield
    finally:
        F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention = saved
