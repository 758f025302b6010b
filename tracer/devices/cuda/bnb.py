"""bitsandbytes' 4-bit matmul on CUDA: the buffers its kernel allocates inside one dispatched op, from
bitsandbytes 0.50's source (backends/cuda/ops.py).

`gemm_4bit`'s CUDA kernel (the `register_kernel("bitsandbytes::gemm_4bit", "cuda")` function) picks, for
M = rows of A: its fused kernel (`_gemm_4bit_kernel_impl`: only the output, absmax already fp32) when
M <= 4, or the unfused fallback (`_dequant_linear_fallback`) when M > 1536 or K is not a multiple of the
block size. The fallback holds, until it returns: under double quantization the dequantized absmax
(`torch.empty_like(absmax_8bit, dtype=float32)`) and that plus the offset (both fp32, one per block), then
the weight in the compute dtype (`torch.empty(shapeB, dtype=A.dtype)`), and `F.linear` (the output, and
cuBLAS's workspace as any GEMM, `devices/cuda/blas.py`). Between 5 and 1536 rows the choice is a per-
architecture heuristic (`_gemm_4bit_use_custom_cuda`, which reads the GPU's SM count) not ported: the
fallback is simulated there too, an upper bound by one dequantized weight (a training step's rows, batch x
sequence, are mostly above 1536).

LLM.int8 without outliers (`llm_int8_threshold=0`): `int8_scaled_mm` runs its "default" kernel
(backends/default/ops.py) on CUDA's: `int8_linear_matmul` into an int32 M x N buffer (cuBLASLt's igemmlt on
bitsandbytes' own handle, no workspace), then `int8_mm_dequant`'s CUDA kernel into fp16 (`empty_like(A,
dtype=float16)`), cast to the output dtype unless fp16; the buffers freed as it returns. With outliers
(`llm_int8_threshold > 0`, the default 6.0) the columns kept in fp16 are those whose activations exceed the
threshold, chosen by value: refused in one line (`bnb_int8_outliers`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ...core.errors import MemtraceError
from ...core.registry import Workspace, optional, patch, rule
from ...meta.compat_bnb import paged_state_on_meta
from . import blas

FUSED_MAX_ROWS = 4  # _GEMM_4BIT_CUSTOM_FLOOR_M: the fused kernel always


def _arg(args: Any, kwargs: Any, index: int, name: str) -> Any:
    return kwargs.get(name, args[index] if len(args) > index else None)


def fallback_bytes(A: torch.Tensor, shape: list[int], absmax_8bit: Any) -> list[int]:
    """The fallback's buffers in allocation order: nested absmax twice (fp32), then the weight."""
    nested = [absmax_8bit.numel() * 4] * 2 if isinstance(absmax_8bit, torch.Tensor) else []
    return [*nested, shape[0] * shape[1] * A.element_size()]


@rule("cuda", optional("bitsandbytes::gemm_4bit.default"))
def gemm_4bit(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    A, shape, blocksize = args[0], [int(d) for d in args[2]], int(args[4])
    if not isinstance(A, torch.Tensor) or A.numel() == 0 or len(shape) != 2:
        return None
    rows = A.numel() // A.shape[-1]
    if rows <= FUSED_MAX_ROWS and shape[1] % blocksize == 0:
        return None
    ws = Workspace()
    for nbytes in fallback_bytes(A, shape, _arg(args, kwargs, 7, "absmax_8bit")):
        ws.alloc(nbytes)
    ws.outputs()
    return blas.with_workspace(ws)


@rule("cuda", optional("bitsandbytes::int8_scaled_mm.default"))
def int8_scaled_mm(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    if not isinstance(out, torch.Tensor):
        return None
    cells = out.numel()
    ws = Workspace()
    ws.alloc(cells * 4)  # int32 product
    if out.dtype == torch.float16:
        ws.outputs()  # the dequantized fp16 is the output
        return ws
    half = ws.alloc(cells * 2)
    ws.outputs()
    ws.free(half)
    return ws


@patch("cuda", "bnb_int8_outliers")
@contextlib.contextmanager
def int8_outliers_refused() -> Iterator[None]:
    """LLM.int8's activation quantization with an outlier threshold, on meta: one line, not a traceback."""
    functional: Any = sys.modules.get("bitsandbytes.functional")
    if functional is None:
        yield
        return
    saved = {name: getattr(functional, name) for name in ("int8_double_quant", "int8_vectorwise_quant")}
    for name, fn in saved.items():
        setattr(functional, name, _refusing_outliers(fn))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(functional, name, fn)


def _refusing_outliers(fn: Callable[..., Any]) -> Callable[..., Any]:
    def quant(A: Any, *args: Any, threshold: float = 0.0, **kwargs: Any) -> Any:
        if threshold > 0.0 and isinstance(A, torch.Tensor) and A.device.type == "meta":
            raise MemtraceError(
                f"LLM.int8 with llm_int8_threshold={threshold} on cuda: its outlier columns are chosen by "
                "the activations' values, which meta does not have; llm_int8_threshold=0.0 simulates it "
                "without outliers"
            )
        return fn(A, *args, threshold=threshold, **kwargs)

    return quant


@patch("cuda", "bnb_paged_state")
def paged_state_managed() -> contextlib.AbstractContextManager[None]:
    """bitsandbytes' paged optimizer state of 1e5 elements or more in CUDA unified memory: apart from the
    caching allocator (`cuda.managed_bytes`)."""
    return paged_state_on_meta(managed=True)
