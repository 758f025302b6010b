"""`torch._scaled_mm` on the CPU (torchao's float8 training, `Float8Linear`): its emulated kernel's buffers.

Without oneDNN's fp8 GEMM, ATen's CPU `_scaled_mm` emulates it (Blas.cpp, `_scaled_mm_out_cpu_emulated`),
each step a plain op invisible to the dispatch mode, as measured under the CPU allocator
(tests/test_torchao.py):

1. an operand that is not contiguous is made so (`contiguous()`: a copy in its fp8 dtype), the first operand
   first; a 2-D transposed copy of at least 60 x 60 elements goes through ATen's blocked transpose
   (Copy.cpp, `copy_same_type_transpose_`), which holds a 60 x 60 buffer of the dtype while it copies;
2. the output (`out_dtype`);
3. each operand in fp32 (`to(float)`), multiplied by its scale (`mul`, with the scale's fp64 and fp32
   scalars for a moment), the fp32 copy freed: the scaled operand is held;
4. the fp32 product (`mm`), then, for an output dtype other than fp32, its conversion, both copied into
   the output and freed; then the scaled operands and the contiguous copies.

Only tensor-wise scales (one element each) are modelled; row-wise scales return None (no buffers placed).
"""

from __future__ import annotations

from typing import Any

import torch

from ...core.registry import Workspace, rule

aten = torch.ops.aten

TRANSPOSE_BLOCK = 60  # ATen's BLOCK_SZ in copy_same_type_transpose_ (Copy.cpp)
FP32 = 4


def _blocked_transpose(t: torch.Tensor) -> bool:
    """Copy.cpp's `copy_transpose_valid`: a 2-D column-major source of at least 60 x 60 elements."""
    return (
        t.dim() == 2
        and t.stride(0) == 1
        and t.stride(1) == t.size(0)
        and t.numel() >= TRANSPOSE_BLOCK * TRANSPOSE_BLOCK
    )


def _contiguous(ws: Workspace, t: torch.Tensor) -> int | None:
    if t.is_contiguous():
        return None
    key = ws.alloc(t.numel() * t.element_size())
    if _blocked_transpose(t):
        ws.free(ws.alloc(TRANSPOSE_BLOCK * TRANSPOSE_BLOCK * t.element_size()))
    return key


def _scaled(ws: Workspace, t: torch.Tensor) -> int:
    """`t.to(float) * scale`: the fp32 copy, the scale's scalars, the product kept."""
    upcast = ws.alloc(t.numel() * FP32)
    wrapped = ws.alloc(8)  # the scale as a wrapped fp64 number
    scalar = ws.alloc(FP32)
    product = ws.alloc(t.numel() * FP32)
    ws.free(scalar)
    ws.free(wrapped)
    ws.free(upcast)
    return product


@rule("cpu", aten._scaled_mm.default)
def scaled_mm_cpu(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    a, b = args[0], args[1]
    scales = [kwargs.get("scale_a", args[2] if len(args) > 2 else None)]
    scales.append(kwargs.get("scale_b", args[3] if len(args) > 3 else None))
    tensors = (a, b, out, *scales)
    if not all(isinstance(t, torch.Tensor) for t in tensors) or any(s.numel() != 1 for s in scales):
        return None
    ws = Workspace()
    copies = [k for k in (_contiguous(ws, a), _contiguous(ws, b)) if k is not None]
    ws.output(0)
    scaled = [_scaled(ws, a), _scaled(ws, b)]
    product = ws.alloc(out.numel() * FP32)
    if out.dtype != torch.float32:
        converted = ws.alloc(out.numel() * out.element_size())
        ws.free(product)
        ws.free(converted)
    else:
        ws.free(product)
    for key in (*reversed(scaled), *reversed(copies)):
        ws.free(key)
    return ws
