"""CUDA matrix multiplies: `prepare_matrix_for_cublas` clones operands cuBLAS cannot read in place
(devices/shared.py), and the first call on a host thread allocates that thread's cuBLAS (or cuBLASLt)
workspace, kept for the run (cublas_workspace.py). The workspace comes after the output and the operand
copies: `getCurrentCUDABlasHandle()` runs inside `at::cuda::blas::gemm`, once the operands are ready."""

from __future__ import annotations

from typing import Any

import torch

from ...core.registry import Workspace, rule
from ..shared import installed_torch, operand_copies
from . import attention, cublas_workspace

aten = torch.ops.aten


def with_workspace(work: Workspace | None, lt: bool = False) -> Workspace:
    """The kernel's steps, then its thread's library workspace (allocated on the thread's first call).

    Backward runs on autograd's CUDA device thread (a node is running there), which holds its own handle.
    """
    ws = work or Workspace()
    if not ws.steps:
        ws.outputs()
    arch = attention.current().gpu.compute_capability
    backward_thread = torch._C._current_autograd_node() is not None
    version = installed_torch()
    if not lt or cublas_workspace.lt_sets_up_cublas(None, version):
        ws.persist(
            cublas_workspace.workspace_key(False, backward_thread), cublas_workspace.cublas_bytes(arch)
        )
    if lt:
        key = cublas_workspace.workspace_key(True, backward_thread, None, version)
        ws.persist(key, cublas_workspace.cublaslt_bytes(arch, None, version))
    return ws


@rule("cuda", aten.mm.default)
def mm(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    return with_workspace(operand_copies(args[0], args[1]))


@rule("cuda", aten.addmm.default)
def addmm(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    """A 1-d bias goes to cuBLASLt's fused epilogue (`gemm_and_bias`); a full matrix to cuBLAS."""
    return with_workspace(operand_copies(args[1], args[2]), lt=args[0].dim() == 1)


@rule(
    "cuda",
    aten.bmm.default,
    aten.baddbmm.default,
    aten.addbmm.default,
    aten.addmv.default,
    aten.mv.default,
    aten.dot.default,
    aten.vdot.default,
)
def cublas_call(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    return with_workspace(None)


@rule("cuda", aten._addmm_activation.default, aten._scaled_mm.default, aten._int_mm.default)
def cublaslt_call(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    return with_workspace(None, lt=True)
