"""CPU matrix multiplies: the copies `addmm_impl_cpu_` makes of operands BLAS cannot read in place.

BLAS needs each matrix row- or column-major with a leading dimension at least its size; an operand with
other strides (an expanded gradient, stride 0, is the common case: the backward of `sum`) is first cloned
contiguous inside the kernel, after the output exists, and freed when the kernel returns. On the CPU,
bfloat16/float16 products go to oneDNN, whose scratchpad comes on top: rules_lowp models both.
"""

from __future__ import annotations

from typing import Any

import torch

from memtrace.tracer import rules_lowp
from memtrace.tracer.devices import Workspace, rule


def blas_ready(t: torch.Tensor) -> bool:
    rows, cols = t.shape
    s0, s1 = t.stride()
    return ((s1 == 1 or cols == 1) and s0 >= max(1, cols)) or ((s0 == 1 or rows == 1) and s1 >= max(1, rows))


def _copies(*mats: Any) -> Workspace | None:
    needed = [m.numel() * m.element_size() for m in mats if isinstance(m, torch.Tensor) and not blas_ready(m)]
    if not needed:
        return None
    ws = Workspace()
    ws.outputs()
    for nbytes in needed:
        ws.alloc(nbytes)
    return ws


def _lowp(*mats: Any) -> bool:
    return all(isinstance(m, torch.Tensor) and m.dtype in (torch.bfloat16, torch.float16) for m in mats)


@rule("cuda", "aten.mm.default")
def mm(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    return _copies(args[0], args[1])


@rule("cuda", "aten.addmm.default")
def addmm(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    return _copies(args[1], args[2])


@rule("cpu", "aten.mm.default")
def mm_cpu(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    if _lowp(args[0], args[1]):
        return rules_lowp.gemm_workspace(args[0], args[1], out)
    return mm(args, kwargs, out)


@rule("cpu", "aten.addmm.default")
def addmm_cpu(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    if _lowp(args[1], args[2]):
        beta = float(kwargs.get("beta", args[3] if len(args) > 3 else 1))
        alpha = float(kwargs.get("alpha", args[4] if len(args) > 4 else 1))
        return rules_lowp.gemm_workspace(args[1], args[2], out, beta, alpha)
    return addmm(args, kwargs, out)
