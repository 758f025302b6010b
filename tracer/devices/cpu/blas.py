"""CPU matrix multiplies: BLAS operand copies (devices/shared.py), and for bfloat16/float16 the oneDNN
GEMM scratchpad on top (gemm_lowp).

The `out=` overloads run the same kernel (`mm_out_cpu`/`addmm_out_cpu` -> `addmm_impl_cpu_`) into the
caller's buffer: inductor's wrapper calls them (`extern_kernels.mm(a, b, out=buf)`), so a compiled step's
GEMMs book the same scratchpad as eager ones. A caller's buffer BLAS cannot write in place is copied first
(the result's column-major copy in `addmm_impl_cpu_`); a fresh output never is."""

from __future__ import annotations

from typing import Any

import torch

from ...core.registry import Workspace, rule
from ..shared import operand_copies
from . import gemm_lowp

aten = torch.ops.aten


def _lowp(*mats: Any) -> bool:
    return all(isinstance(m, torch.Tensor) and m.dtype in (torch.bfloat16, torch.float16) for m in mats)


@rule("cpu", aten.mm.default, aten.mm.out)
def mm_cpu(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    if _lowp(args[0], args[1]):
        return gemm_lowp.gemm_workspace(args[0], args[1], out)
    return operand_copies(out, args[0], args[1])


@rule("cpu", aten.addmm.default, aten.addmm.out)
def addmm_cpu(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    if _lowp(args[1], args[2]):
        beta = float(kwargs.get("beta", args[3] if len(args) > 3 else 1))
        alpha = float(kwargs.get("alpha", args[4] if len(args) > 4 else 1))
        return gemm_lowp.gemm_workspace(args[1], args[2], out, beta, alpha)
    return operand_copies(out, args[1], args[2])
