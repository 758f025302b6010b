"""CPU matrix multiplies: the copies `addmm_impl_cpu_` makes of operands BLAS cannot read in place.

BLAS needs each matrix row- or column-major with a leading dimension at least its size; an operand with
other strides (an expanded gradient, stride 0, is the common case: the backward of `sum`) is first cloned
contiguous inside the kernel, after the output exists, and freed when the kernel returns.
"""

from __future__ import annotations

from typing import Any

import torch

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


@rule("cpu", "aten.mm.default")
@rule("cuda", "aten.mm.default")
def mm(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    return _copies(args[0], args[1])


@rule("cpu", "aten.addmm.default")
@rule("cuda", "aten.addmm.default")
def addmm(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    return _copies(args[1], args[2])
