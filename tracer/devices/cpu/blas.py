"""CPU matrix multiplies: BLAS operand copies (devices/shared.py), and for bfloat16/float16 the oneDNN
GEMM scratchpad on top (gemm_lowp).

The `out=` overloads run the same kernel (`mm_out_cpu`/`addmm_out_cpu` -> `addmm_impl_cpu_`) into the
caller's buffer: inductor's wrapper calls them (`extern_kernels.mm(a, b, out=buf)`), so a compiled step's
GEMMs book the same scratchpad as eager ones. A caller's buffer BLAS cannot write in place is copied
(`addmm_impl_cpu_` makes the result column-major contiguous, its own test, not the operands'); a fresh
output never is."""

from __future__ import annotations

from typing import Any

import torch

from ...core.registry import Workspace, rule
from ..shared import operand_copies
from . import gemm_lowp

aten = torch.ops.aten


def _lowp(*mats: Any) -> bool:
    return all(isinstance(m, torch.Tensor) and m.dtype in (torch.bfloat16, torch.float16) for m in mats)


def _result_ready(t: torch.Tensor) -> bool:
    """`addmm_impl_cpu_` writes the result in place when it is column-major, or row-major (the product
    transposed), with a leading dimension at least its size."""
    rows, cols = t.shape
    s0, s1 = t.stride()
    return (s0 == 1 and (cols == 1 or s1 >= max(1, rows))) or (s1 == 1 and (rows == 1 or s0 >= max(1, cols)))


def _copies(out: Any, m1: Any, m2: Any) -> Workspace | None:
    """The result's copy when BLAS cannot write it in place, and the operands' copies."""
    ws = operand_copies(m1, m2)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or _result_ready(out):
        return ws
    ws = ws or Workspace()
    if not ws.steps:
        ws.outputs()
    ws.alloc(out.numel() * out.element_size())
    return ws


@rule("cpu", aten.mm.default, aten.mm.out)
def mm_cpu(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    if _lowp(args[0], args[1]):
        return gemm_lowp.gemm_workspace(args[0], args[1], out)
    return _copies(out, args[0], args[1])


@rule("cpu", aten.addmm.default, aten.addmm.out)
def addmm_cpu(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    if _lowp(args[1], args[2]):
        beta = float(kwargs.get("beta", args[3] if len(args) > 3 else 1))
        alpha = float(kwargs.get("alpha", args[4] if len(args) > 4 else 1))
        return gemm_lowp.gemm_workspace(args[1], args[2], out, beta, alpha)
    return _copies(out, args[1], args[2])
