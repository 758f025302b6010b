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
"""

from __future__ import annotations

from typing import Any

import torch

from ...core.registry import Workspace, optional, rule
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
