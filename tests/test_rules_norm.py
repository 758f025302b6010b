"""CPU LayerNorm's copies of non-contiguous operands and its dgamma/dbeta buffer, against the allocator."""

from __future__ import annotations

import pytest
import torch
from reference import measured_op_rise, predicted_op_rise

FWD = torch.ops.aten.native_layer_norm.default
BWD = torch.ops.aten.native_layer_norm_backward.default
MASKS = [[True, True, True], [True, False, False], [True, True, False], [False, True, True]]


def _x(layout: str, dtype: torch.dtype, n: int) -> torch.Tensor:
    if layout == "permuted":  # LayerNorm2d: an NCHW map normalised over C through a channels-last view
        return torch.randn(2, n, 8, 8, dtype=dtype).permute(0, 2, 3, 1)
    return torch.randn(2, 8, 8, n, dtype=dtype)


# float32 only: for bfloat16 the CPU kernel returns mean and rstd in bfloat16 where PyTorch's meta kernel says
# float32 (M x 2 bytes each too many, not modelled: they are tiny)
@pytest.mark.parametrize("dtype", [torch.float32])
@pytest.mark.parametrize("layout", ["contiguous", "permuted"])
@pytest.mark.parametrize("n", [64, 1000])
def test_forward(layout: str, dtype: torch.dtype, n: int) -> None:
    x, w, b = _x(layout, dtype, n), torch.randn(n, dtype=dtype), torch.randn(n, dtype=dtype)
    args = (x, [n], w, b, 1e-6)
    assert predicted_op_rise(FWD, args) == measured_op_rise(FWD, args)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mask", MASKS, ids=[str(m) for m in MASKS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "permuted"])
def test_backward(layout: str, dtype: torch.dtype, mask: list[bool], threads: int) -> None:
    n = 96
    x, w, b = _x(layout, dtype, n), torch.randn(n, dtype=dtype), torch.randn(n, dtype=dtype)
    out, mean, rstd = FWD(x, [n], w, b, 1e-6)
    grad = torch.randn_like(out) if layout == "contiguous" else _x(layout, dtype, n)
    args = (grad, x, [n], mean, rstd, w, b, mask)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert predicted_op_rise(BWD, args) == measured_op_rise(BWD, args)
    finally:
        torch.set_num_threads(before)
