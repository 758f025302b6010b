"""bitsandbytes' 4-bit matmul on the CPU: the buffers its kernel allocates inside one dispatched op.

`torch.ops.bitsandbytes.gemm_4bit` has no CPU kernel of its own in bitsandbytes 0.50; its "default" kernel
(backends/default/ops.py `_gemm_4bit_default_impl`) runs, invisible to the dispatch mode:
under double quantization the absmax is dequantized (`dequantize_blockwise`, fp32, one per block) and the
offset added (a second fp32 copy; the first freed), then `dequantize_4bit` (backends/cpu/ops.py) makes the
weight in the compute dtype (N x K, `torch.empty(shape, dtype)`), and `F.linear` multiplies: its output is
the op's output, with the GEMM's own buffers (oneDNN's scratchpad for bf16, `devices/cpu/gemm_lowp.py`);
the dequantized weight and absmax are freed when the kernel returns. Not modelled: the generic fallback
`dequantize_4bit` takes for an odd inner dimension or blocks >= 2048 on AVX-512 (`_dequantize_4bit_compute`,
its own temporaries).

LLM.int8 (`Linear8bitLt`) trains on the CPU through `MatMul8bitFp` (autograd/_functions.py `matmul`: CPU
tensors in training): the int8 weight dequantized to the input's dtype and `F.linear`, plain aten ops. Meta
tensors would take the GPU's `MatMul8bitLt` (int8 quantization of the activations, outlier columns found
by value); the patch `bnb_int8_on_cpu` sends them where CPU tensors go.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch

from ...core.registry import Workspace, optional, patch, rule
from ...meta.compat_bnb import paged_state_on_meta
from . import blas

aten = torch.ops.aten


def _arg(args: Any, kwargs: Any, index: int, name: str) -> Any:
    return kwargs.get(name, args[index] if len(args) > index else None)


def nested_absmax(ws: Workspace, absmax_8bit: Any) -> None:
    """Double quantization: the fp32 absmax rebuilt (`dequantize_blockwise`, then `+ offset`), held by the
    kernel until it returns."""
    if isinstance(absmax_8bit, torch.Tensor):
        nbytes = absmax_8bit.numel() * 4
        first = ws.alloc(nbytes)
        ws.alloc(nbytes)
        ws.free(first)


def splice(ws: Workspace, inner: Workspace | None) -> None:
    """Another kernel's steps (the GEMM's), inside this one; its outputs are this op's, already placed."""
    if inner is None:
        return
    keys: dict[int, int] = {}
    for step in inner.steps:
        if step.kind == "alloc":
            keys[step.key] = ws.alloc(step.nbytes)
        elif step.kind == "free" and step.key in keys:
            ws.free(keys.pop(step.key))
        elif step.kind == "persist":
            ws.persist(step.name, step.nbytes)


@rule("cpu", optional("bitsandbytes::gemm_4bit.default"))
def gemm_4bit(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    A, shape = args[0], [int(d) for d in args[2]]
    if not isinstance(A, torch.Tensor) or not isinstance(out, torch.Tensor) or len(shape) != 2:
        return None
    ws = Workspace()
    nested_absmax(ws, _arg(args, kwargs, 7, "absmax_8bit"))
    n, k = shape
    weight = torch.empty((n, k), dtype=A.dtype, device="meta")
    ws.alloc(n * k * A.element_size())
    ws.output(0)
    rows = A.reshape(-1, k)
    flat = out.reshape(-1, n)
    bias = _arg(args, kwargs, 6, "bias")
    if bias is None:
        splice(ws, blas.mm_cpu((rows, weight.t()), {}, flat))
    else:
        splice(ws, blas.addmm_cpu((bias, rows, weight.t()), {}, flat))
    return ws


@patch("cpu", "bnb_int8_on_cpu")
@contextlib.contextmanager
def int8_training_as_on_cpu() -> Iterator[None]:
    """`bitsandbytes.matmul` of meta tensors in training runs `MatMul8bitFp`, as CPU tensors do."""
    bnb: Any = sys.modules.get("bitsandbytes")
    original = getattr(bnb, "matmul", None)
    if bnb is None or original is None:
        yield
        return
    functions = sys.modules["bitsandbytes.autograd._functions"]

    def matmul(
        A: Any, B: Any, out: Any = None, state: Any = None, threshold: float = 0.0, bias: Any = None
    ) -> Any:
        state = state or functions.MatmulLtState()
        if threshold > 0.0:
            state.threshold = threshold
        if state.is_training and A.device.type == "meta":
            return functions.MatMul8bitFp.apply(A, B, out, bias, state)
        return original(A, B, out, state, threshold, bias)

    bnb.matmul = matmul
    try:
        yield
    finally:
        bnb.matmul = original


@patch("cpu", "bnb_paged_state")
def paged_state_as_on_cpu() -> contextlib.AbstractContextManager[None]:
    """bitsandbytes' paged optimizers on the CPU keep ordinary state (bitsandbytes falls back so)."""
    return paged_state_on_meta(managed=False)
