"""CPU convolution workspace rules against the allocator: one op on real tensors under the profiler, the
same op's rule replayed by the recorder on meta tensors; the peak rise during the op must agree.

The oneDNN configurations run where oneDNN's x86 kernels do (AVX-512: channel blocks of 16, AVX2: 8, as
`cpu_isa.mayiuse` decides under ONEDNN_MAX_CPU_ISA); on AVX2 the backward passes of the 1x1, depthwise and
first-layer kernels (reducers not modelled there) are skipped; the slow-path ones always run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from reference import measured_op_rise, predicted_op_rise

from memtrace.tracer.devices.cpu.conv import channel_block, onednn_modelled, reduced_path

TOLERANCE = 0.005
ONEDNN = torch.backends.mkldnn.is_available() and onednn_modelled()
AVX512 = ONEDNN and channel_block() == 16


@dataclass(frozen=True)
class Case:
    name: str
    x: tuple[int, ...]  # input shape: (N, C, L) or (N, C, H, W)
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    bias: bool = True
    grad_input: bool = True  # False: the first layer of a network
    grad_weight: bool = True  # False: a frozen layer
    dtype: torch.dtype = torch.float32
    contiguous: bool = True  # False: the input is a transposed view, copied by the kernel
    onednn: bool = True  # the case runs on oneDNN (skipped off x86 and below AVX2)
    avx2_backward: bool = True  # False: its backward kernel's reducers are not modelled on AVX2


CASES = [
    Case("direct-3x3", (2, 32, 32, 32), 64, 3, padding=1),
    Case(
        "first-layer-strided",
        (4, 3, 32, 32),
        32,
        3,
        stride=2,
        padding=1,
        bias=False,
        grad_input=False,
        avx2_backward=False,
    ),
    Case(
        "depthwise-strided",
        (4, 64, 32, 32),
        64,
        3,
        stride=2,
        padding=1,
        groups=64,
        bias=False,
        avx2_backward=False,
    ),
    Case("pointwise", (4, 64, 16, 16), 128, 1, bias=False, avx2_backward=False),
    Case("pointwise-strided", (2, 64, 32, 32), 128, 1, stride=2, avx2_backward=False),
    Case("strided-uneven", (2, 32, 33, 33), 40, 3, stride=2, padding=1),
    Case("strided-uneven-rows", (2, 96, 4, 28), 64, 3, stride=3, bias=False, grad_weight=False),
    Case("dilated", (2, 32, 24, 24), 32, 3, padding=2, dilation=2, bias=False),
    Case("grouped-8-per-group", (2, 32, 16, 16), 64, 3, padding=1, groups=4),
    Case("depthwise-5x5", (2, 32, 16, 16), 32, 5, padding=2, groups=32, avx2_backward=False),
    Case("frozen", (2, 48, 16, 16), 48, 3, padding=1, grad_weight=False),
    Case("conv1d", (4, 16, 256), 32, 5, padding=2),
    Case("strided-view-input", (2, 32, 16, 24), 32, 3, padding=1, contiguous=False),
    Case("slow-small-batch", (1, 8, 16, 16), 16, 3, padding=1, onednn=False),
    Case("slow-dilated", (1, 8, 16, 16), 16, 3, padding=2, dilation=2, onednn=False),
    Case("slow-float64", (3, 8, 16, 16), 16, 3, stride=2, padding=1, dtype=torch.float64, onednn=False),
    # bf16: ATen's slow path where oneDNN does not take bf16 (AVX2), oneDNN's AVX-512-BF16 kernels else
    Case("bf16-3x3", (4, 16, 32, 32), 16, 3, padding=1, bias=False, dtype=torch.bfloat16, onednn=False),
    Case(
        "bf16-first-layer",
        (2, 3, 32, 32),
        16,
        3,
        padding=1,
        grad_input=False,
        dtype=torch.bfloat16,
        onednn=False,
    ),
    Case("bf16-strided", (2, 16, 32, 32), 32, 3, stride=2, padding=1, dtype=torch.bfloat16, onednn=False),
    Case("bf16-1x1", (4, 64, 16, 16), 64, 1, bias=False, dtype=torch.bfloat16, onednn=False),
    Case("bf16-1x1-expand", (8, 64, 14, 14), 256, 1, dtype=torch.bfloat16, onednn=False),
    Case(
        "bf16-1x1-strided", (4, 64, 16, 16), 128, 1, stride=2, bias=False, dtype=torch.bfloat16, onednn=False
    ),
    Case("slow-view-input", (1, 8, 16, 12), 16, 3, padding=1, contiguous=False, onednn=False),
]


def _params(case: Case) -> dict[str, Any]:
    dims = len(case.x) - 2
    return {
        "stride": [case.stride] * dims,
        "padding": [case.padding] * dims,
        "dilation": [case.dilation] * dims,
        "transposed": False,
        "output_padding": [0] * dims,
        "groups": case.groups,
    }


def _tensors(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(0)
    weight_shape = (case.out_channels, case.x[1] // case.groups, *[case.kernel] * (len(case.x) - 2))
    x = torch.randn(case.x, generator=gen, dtype=case.dtype)
    if not case.contiguous:
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    w = torch.randn(weight_shape, generator=gen, dtype=case.dtype)
    b = torch.randn(case.out_channels, generator=gen, dtype=case.dtype) if case.bias else None
    return x, w, b


def _forward(case: Case, x: Any, w: Any, b: Any) -> tuple[Any, tuple[Any, ...]]:
    p = _params(case)
    args = (
        x,
        w,
        b,
        p["stride"],
        p["padding"],
        p["dilation"],
        p["transposed"],
        p["output_padding"],
        p["groups"],
    )
    return torch.ops.aten.convolution.default, args


def _backward(case: Case, gy: Any, x: Any, w: Any) -> tuple[Any, tuple[Any, ...]]:
    p = _params(case)
    mask = [case.grad_input, case.grad_weight, case.bias]
    args = (
        gy, x, w, [case.out_channels] if case.bias else None, p["stride"], p["padding"], p["dilation"],
        p["transposed"], p["output_padding"], p["groups"], mask,
    )  # fmt: skip
    return torch.ops.aten.convolution_backward.default, args


def _skip_unmodelled(case: Case, backward: bool = False) -> None:
    if case.dtype == torch.bfloat16 and reduced_path(case.dtype) is None:
        pytest.skip("oneDNN's bf16 convolutions on this ISA are not modelled")
    if case.onednn and not ONEDNN:
        pytest.skip("oneDNN's x86 convolution kernels do not run here")
    if case.onednn and backward and not AVX512 and not case.avx2_backward:
        pytest.skip("this backward kernel's reducers are not modelled on AVX2")


def _check(func: Callable[..., Any], args: tuple[Any, ...], what: str) -> None:
    measured = measured_op_rise(func, args)
    predicted = predicted_op_rise(func, args)
    error = (predicted - measured) / measured
    assert abs(error) <= TOLERANCE, (
        f"{what}: predicted rise {predicted:,} vs measured {measured:,} ({error:+.3%})"
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_forward_rise_matches_the_allocator(case: Case) -> None:
    _skip_unmodelled(case)
    x, w, b = _tensors(case)
    func, args = _forward(case, x, w, b)
    _check(func, args, f"{case.name} forward")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_backward_rise_matches_the_allocator(case: Case) -> None:
    _skip_unmodelled(case, backward=True)
    x, w, b = _tensors(case)
    func, args = _forward(case, x, w, b)
    gy = torch.ones_like(func(*args))
    func, args = _backward(case, gy, x, w)
    _check(func, args, f"{case.name} backward")


def test_backend_choice_follows_use_mkldnn() -> None:
    """Float32 goes to oneDNN unless the input is one small image; float64 takes the slow path, and bf16
    too where PyTorch's `mkldnn_bf16_device_check` fails."""
    from memtrace.tracer.devices.cpu.conv import convolution

    def steps(shape: tuple[int, ...], dtype: torch.dtype) -> list[str]:
        x = torch.empty(shape, dtype=dtype, device="meta")
        w = torch.empty(16, shape[1], 3, 3, dtype=dtype, device="meta")
        out = torch.empty(shape[0], 16, shape[2], shape[3], dtype=dtype, device="meta")
        ws = convolution((x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1), {}, out)
        return [] if ws is None else [s.kind for s in ws.steps]

    if ONEDNN:
        assert steps((2, 16, 8, 8), torch.float32).count("alloc") >= 2  # reorders and a blocked output
    assert steps((1, 8, 16, 16), torch.float32) == ["alloc", "output", "free"]  # im2col columns
    assert steps((2, 16, 8, 8), torch.float64) == ["alloc", "output", "free"]
    bf16 = steps((2, 16, 8, 8), torch.bfloat16)
    if reduced_path(torch.bfloat16) == "slow":  # oneDNN does not take bf16 here: im2col columns
        assert bf16 == ["alloc", "output", "free"]
    elif reduced_path(torch.bfloat16) is None:
        assert bf16 == []  # oneDNN's other bf16 kernels: not modelled
