"""The `out=` overloads of the CPU matrix multiplies against the allocator, live on this machine.

Inductor's wrapper runs a compiled step's GEMMs as `extern_kernels.mm(a, b, out=buf)`; without a rule for
`aten.mm.out` a compiled bf16 step on an AVX-512-BF16 CPU booked no oneDNN scratchpad (the compiled HF llama
of tests/test_compile.py was 4.4% low there). Each case runs the op into a caller's buffer under the profiler
and holds the allocations inside it (operand copies, the result's copy when BLAS cannot write the buffer in
place, oneDNN's scratchpad where this machine's oneDNN runs the GEMM) against the rule's. Where oneDNN does
not run bf16/fp16 GEMMs (AVX2) the bf16/fp16 cases check that nothing is allocated on either side.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from reference import allocation_events, largest_rise, on_meta, workspace_sizes
from torch.profiler import ProfilerActivity, profile

from memtrace.tracer.devices.cpu.gemm_lowp import modelled
from memtrace.tracer.engine.device_model import DeviceModel

aten = torch.ops.aten
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
M, K, N = 96, 64, 80


def _buffer(layout: str, dtype: torch.dtype) -> torch.Tensor:
    """The caller's (M, N) buffer: row-major, column-major (written as the transposed product), every other
    column of a wider one (BLAS cannot write it: copied), or an (M, 1) column at odd strides."""
    if layout == "rows":
        return torch.empty(M, N, dtype=dtype)
    if layout == "cols":
        return torch.empty(N, M, dtype=dtype).t()
    if layout == "strided":
        return torch.empty(M, 2 * N, dtype=dtype)[:, ::2]
    return torch.empty(M * 2 + 8, dtype=dtype).as_strided((M, 1), (2, 5))


def _predicted_rise(op: Any, args: tuple[torch.Tensor, ...], buf: torch.Tensor) -> int:
    out = on_meta(buf)
    return largest_rise(
        workspace_sizes(DeviceModel("cpu").workspace(op, tuple(on_meta(a) for a in args), {"out": out}, out))
    )


@pytest.mark.parametrize("layout", ["rows", "cols", "strided", "column"])
@pytest.mark.parametrize("name", ["mm", "addmm"])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_out_overload_allocates_as_the_rule_says(dtype: str, name: str, layout: str) -> None:
    dt = DTYPES[dtype]
    if dt is not torch.float32 and not modelled(dt):
        pytest.skip(f"this CPU's oneDNN {dtype} GEMM kernels are not modelled")
    gen = torch.Generator().manual_seed(0)
    n = 1 if layout == "column" else N
    a, b = torch.randn(M, K, generator=gen).to(dt), torch.randn(K, n, generator=gen).to(dt)
    buf = _buffer(layout, dt)
    args: tuple[torch.Tensor, ...] = (a, b) if name == "mm" else (torch.randn(n, generator=gen).to(dt), a, b)
    op = getattr(aten, name).out
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        op(*args, out=buf)
    measured = largest_rise(size for _, size, _ in allocation_events(prof))
    assert _predicted_rise(op, args, buf) == measured, f"{name}.out {dtype} into a {layout} buffer"
    if layout == "strided" or (layout == "column" and dt is torch.float32):
        assert measured > 0  # the result is copied: the case says something on every machine
