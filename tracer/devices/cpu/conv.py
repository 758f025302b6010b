"""Kernel-internal buffers of PyTorch's CPU kernels, as the CPU allocator sees them.

Each rule is checked against the profiler's allocation events (tests/test_rules_cpu.py).

Convolution (`aten.convolution`, `aten.convolution_backward`) picks its backend as
`ConvParams::use_mkldnn` does (aten/src/ATen/native/Convolution.cpp). On oneDNN (fp32, NCHW) the input,
weights and (backward) output gradient are reordered into channel-blocked layouts (nChw16c, channels
padded to the block), the result is computed into a blocked buffer and copied into the real output
(`mkldnn_to_dense`), and every kernel books a scratchpad (weight-reduction copies per minibatch thread,
barriers, reducers, im2col columns...). Which kernel runs each pass, and so the layouts and scratchpad,
follows oneDNN 3.x as bundled with PyTorch 2.13: jit:avx512_core (direct; plain source below 16 input
channels), jit_1x1, jit_dw, brgconv_strided (strided backward-data, NHWC, then a `.contiguous()` copy),
jit:avx2 (backward-weights of 4-15 channels or 8-channel groups) and gemm (the fallback). Sizes were
measured exactly on an AVX-512 machine at 1 to 16 threads (`torch.get_num_threads()`, oneDNN's OpenMP
pool); the GEMM forward's cache blocking is not modelled (its columns are an upper bound).
The channel block is 16 floats where oneDNN may use AVX-512 and 8 on AVX2 (`channel_block`, from
`cpu_isa.mayiuse`, so ONEDNN_MAX_CPU_ISA counts); on AVX2 the layouts follow and the scratchpads of the
direct kernels are modelled, not those of the 1x1 and depthwise backward-weights kernels. Off x86 (aarch64:
ACL) and below AVX2 the oneDNN path is not modelled (outputs only). The slow paths (`_slow_conv2d_*`,
`slow_conv_dilated2d`: one small fp32 image, fp64) allocate im2col columns. A strided (non-contiguous)
operand is first copied. bf16 convolutions are modelled where oneDNN runs its AVX-512-BF16 kernels
(`conv_bf16.py`); channels-last, transposed, 3-d, fp16 and other bf16 convolutions are not (no rule:
outputs only).

Here: the geometry, the backend, the order of each kernel's allocations and frees, and the registered rules;
oneDNN's arithmetic (which kernel, the blocked layouts, the scratchpads) is in `conv_onednn.py`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ...core.registry import Workspace, rule
from . import isa as cpu_isa
from .conv_bf16 import (
    bf16_1x1_data_scratch,
    bf16_1x1_weights_scratch,
    bf16_backward_modelled,
    bf16_data_brgemm,
    bf16_data_layout,
    bf16_forward_scratch,
    bf16_layout,
    bf16_modelled,
    bf16_weights_scratch,
    is_1x1,
    pointwise,
)
from .conv_onednn import (
    Conv,
    brgemm_scratch,
    brgemm_weights,
    channel_block,
    data_kind,
    data_scratch,
    forward_kind,
    forward_scratch,
    layout,
    onednn_modelled,
    weights_kind,
    weights_scratch,
)

aten = torch.ops.aten

__all__ = ["channel_block", "convolution", "convolution_backward", "onednn_modelled", "reduced_path"]


# --------------------------------------------------------------------------- geometry


def _ints(v: Any) -> list[int]:
    return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]


def _hw(v: Any, spatial: int, default: int) -> tuple[int, int]:
    """(height, width) of a stride/padding/dilation; 1-d convolutions get `default` for the height."""
    vals = _ints(v)
    return (default, vals[-1]) if spatial == 1 else (vals[0], vals[-1])


def _geometry(
    x: Any, wt: Any, stride: Any, padding: Any, dilation: Any, groups: Any, bias: bool
) -> Conv | None:
    if not isinstance(x, torch.Tensor) or not isinstance(wt, torch.Tensor) or x.dim() not in (3, 4):
        return None
    spatial = x.dim() - 2
    h, w = (1, x.shape[-1]) if spatial == 1 else (x.shape[-2], x.shape[-1])
    kh, kw = (1, wt.shape[-1]) if spatial == 1 else (wt.shape[-2], wt.shape[-1])
    (sh, sw), (ph, pw), (dh, dw) = (
        _hw(stride, spatial, 1),
        _hw(padding, spatial, 0),
        _hw(dilation, spatial, 1),
    )
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    plain = not (_channels_last(x) or _channels_last(wt))
    n, c, o, nthr = int(x.shape[0]), int(x.shape[1]), int(wt.shape[0]), torch.get_num_threads()
    return Conv(
        n, c, int(h), int(w), o, int(kh), int(kw), sh, sw, ph, pw, dh, dw, int(groups), int(ho), int(wo),
        x.element_size(), bias, x.dtype, plain, nthr,
    )  # fmt: skip


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _backend(cv: Conv) -> str | None:
    """`_select_conv_backend` on the CPU for what is modelled: "mkldnn", "slow2d", "dilated2d" or None."""
    if cv.dtype == torch.float32:
        if _use_mkldnn(cv):  # x86 kernels only (aarch64: ACL; below AVX2: SSE4.1 kernels), else outputs only
            return "mkldnn" if cv.plain and onednn_modelled() else None
    elif cv.dtype in (torch.bfloat16, torch.float16):
        path = reduced_path(cv.dtype)
        if path != "slow":  # oneDNN takes it: its AVX-512-BF16 kernels are modelled, no other
            return "mkldnn_bf16" if path == "avx512_bf16" and bf16_modelled(cv) else None
    if cv.g > 1 or not cv.plain:
        return None
    return "dilated2d" if cv.dh > 1 or cv.dw > 1 else "slow2d"


def reduced_path(dtype: torch.dtype) -> str | None:
    """Where a bf16/fp16 convolution runs: "slow" (ATen's `_slow_conv2d`, where PyTorch's
    `mkldnn_bf16_device_check` / `mkldnn_fp16_device_check` fail: oneDNN's effective ISA below avx2_vnni_2
    and, for bf16, below avx512_core), "avx512_bf16" (oneDNN's AVX-512-BF16 kernels, conv_bf16.py) or None
    (oneDNN's other kernels: AMX, emulated bf16, fp16; not modelled)."""
    if not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return "slow"
    if not cpu_isa.is_x86():
        return None  # aarch64: PyTorch's ARM check and ACL's kernels, not modelled
    isa = cpu_isa.onednn_isa()
    if dtype == torch.bfloat16:
        on_onednn = cpu_isa.onednn_isa_at_least("avx512_core") or isa == "avx2_vnni_2"
        return ("avx512_bf16" if isa == "avx512_core_bf16" else None) if on_onednn else "slow"
    on_onednn = cpu_isa.onednn_isa_at_least("avx512_core_fp16") or isa == "avx2_vnni_2"
    return None if on_onednn else "slow"


def _use_mkldnn(cv: Conv) -> bool:
    if not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return False
    dilated = cv.dh > 1 or cv.dw > 1
    not_1x1 = cv.kh != 1 or cv.kw != 1
    fast_1x1 = cv.strided or dilated or cv.n >= 16 or not_1x1 or cv.nthr > 1
    big = cv.g > 1 or (cv.kh > 3 and cv.kw > 3) or cv.n > 1 or cv.n * cv.c * cv.h * cv.w > 20480
    return fast_1x1 and big


# --------------------------------------------------------------------------- forward


def _mkldnn_forward(ws: Workspace, cv: Conv) -> None:
    if cv.dtype == torch.bfloat16:  # conv_bf16.py: AVX-512-BF16's kernels
        lay, scratch = bf16_layout(cv), ws.alloc(bf16_forward_scratch(cv))
    else:
        kind = forward_kind(cv)
        lay, scratch = layout(cv, kind), ws.alloc(forward_scratch(cv, kind))
    src = ws.alloc(cv.bytes(lay.src))
    wei = ws.alloc(cv.bytes(lay.wei))
    dst = ws.alloc(cv.bytes(lay.dst or cv.n * cv.o * cv.ho * cv.wo))
    for key in (wei, src, scratch):
        ws.free(key)
    ws.output(0)
    ws.free(dst)


# --------------------------------------------------------------------------- backward data


def _backward_data(ws: Workspace, cv: Conv) -> None:
    if cv.dtype == torch.bfloat16 and cv.strided:  # conv_bf16.py: brgconv_strided
        _backward_data_brgemm(ws, cv, *bf16_data_brgemm(cv))
        return
    if cv.dtype == torch.bfloat16:  # conv_bf16.py: the direct kernel (no scratchpad) or the 1x1 kernel
        lay = bf16_data_layout(cv)
        gy, wei, gx = ws.alloc(cv.bytes(lay.dst)), ws.alloc(cv.bytes(lay.wei)), ws.alloc(cv.bytes(lay.src))
        scratch = ws.alloc(bf16_1x1_data_scratch(cv) if is_1x1(cv) else 0)
        for key in (scratch, wei, gy):
            ws.free(key)
        ws.output(0)
        ws.free(gx)
        return
    kind = data_kind(cv)
    if kind == "brg":
        _backward_data_brgemm(ws, cv, brgemm_weights(cv), brgemm_scratch(cv))
        return
    lay = layout(cv, kind)
    gy = ws.alloc(cv.bytes(lay.dst))
    wei = ws.alloc(cv.bytes(lay.wei))
    gx = ws.alloc(cv.bytes(lay.src or cv.n * cv.c * cv.h * cv.w))
    scratch = ws.alloc(data_scratch(cv, kind))
    for key in (scratch, wei, gy):
        ws.free(key)
    ws.output(0)
    ws.free(gx)


def _backward_data_brgemm(ws: Workspace, cv: Conv, weights: int, scratch_bytes: int) -> None:
    """brgconv_strided: NHWC diff-dst and diff-src, then `mkldnn_to_dense` and a `.contiguous()` copy."""
    gx_bytes = cv.bytes(cv.n * cv.c * cv.h * cv.w)
    gy = ws.alloc(cv.bytes(cv.n * cv.o * cv.ho * cv.wo))
    wei = ws.alloc(cv.bytes(weights))
    gx = ws.alloc(gx_bytes)
    scratch = ws.alloc(scratch_bytes)
    for key in (scratch, wei, gy):
        ws.free(key)
    dense = ws.alloc(gx_bytes)
    ws.output(0)
    ws.free(dense)
    ws.free(gx)


# --------------------------------------------------------------------------- backward weights


def _backward_weights(ws: Workspace, cv: Conv, grad_bias: bool) -> None:
    cv = replace(cv, bias=grad_bias)
    if cv.dtype == torch.bfloat16:  # conv_bf16.py; a first layer's weights are not padded
        lay = bf16_layout(cv)
        wei = lay.wei if cv.c >= 16 else _rup16(cv.o) * cv.c * cv.kh * cv.kw
        scratch_bytes = bf16_1x1_weights_scratch(cv) if pointwise(cv) else bf16_weights_scratch(cv)
        lay = replace(lay, wei=wei)
    else:
        kind = weights_kind(cv)
        lay, scratch_bytes = layout(cv, kind), weights_scratch(cv, kind)
    gy = ws.alloc(cv.bytes(lay.dst))
    src = ws.alloc(cv.bytes(lay.src))
    gw = ws.alloc(cv.bytes(lay.wei or cv.o * (cv.c // cv.g) * cv.kh * cv.kw))
    scratch = ws.alloc(scratch_bytes)
    gb = ws.alloc(cv.bytes(cv.o) if grad_bias else 0)
    for key in (scratch, src, gy):
        ws.free(key)
    ws.output(2)
    ws.output(1)
    ws.free(gw)
    ws.free(gb)


# --------------------------------------------------------------------------- slow paths


def _slow_columns(cv: Conv, images: int, dilated: bool) -> int:
    """im2col columns; `_slow_conv2d` reads a 1x1 unit-stride unpadded input in place."""
    if not dilated and cv.kh == cv.kw == 1 and not cv.strided and cv.ph == cv.pw == 0:
        return 0
    return cv.bytes(images * cv.c * cv.kh * cv.kw * cv.ho * cv.wo)


def _slow_forward(ws: Workspace, cv: Conv, dilated: bool) -> None:
    """`_slow_conv2d_forward`: columns for the whole batch, then the output; the dilated kernel: the
    output, then columns for one image at a time."""
    if dilated:
        ws.output(0)
        ws.free(ws.alloc(_slow_columns(cv, 1, True)))
        return
    cols = ws.alloc(_slow_columns(cv, cv.n, False))
    ws.output(0)
    ws.free(cols)


def _slow_backward(ws: Workspace, cv: Conv, dilated: bool, mask: list[bool]) -> None:
    """The gradients first (input, bias, weight; the dilated kernel: input, weight, bias), then the
    columns (`_slow_conv2d` needs them for the weights only); the dilated kernel sums the bias gradient
    image by image into a temporary. In bf16/fp16, `_slow_conv2d`'s bias gradient (a `sum` over batch and
    pixels) reduces a float copy of grad_output into a float result, both freed at once."""
    for i in (0, 1, 2) if dilated else (0, 2, 1):
        if mask[i]:
            ws.output(i)
        if i == 2 and mask[2] and not dilated and cv.elem == 2:
            ws.free(ws.alloc(4 * cv.o))
            ws.free(ws.alloc(4 * cv.n * cv.o * cv.ho * cv.wo))
    if mask[1] or (dilated and mask[0]):
        cols = ws.alloc(_slow_columns(cv, 1 if dilated else cv.n, dilated))
        if dilated and mask[2]:
            ws.free(ws.alloc(cv.bytes(cv.o)))
        ws.free(cols)


# --------------------------------------------------------------------------- the rules


@rule("cpu", aten.convolution.default)
def convolution(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    a = _args(args, kwargs, _FORWARD)
    has_bias = a.get("bias") is not None
    cv = _geometry(a["input"], a["weight"], a["stride"], a["padding"], a["dilation"], a["groups"], has_bias)
    backend = _backend(cv) if cv is not None and not a["transposed"] else None
    if cv is None or backend is None:
        return None
    ws = _contiguous_copies(a["input"])
    if backend in ("mkldnn", "mkldnn_bf16"):
        _mkldnn_forward(ws, cv)
    else:
        _slow_forward(ws, cv, backend == "dilated2d")
    return ws


@rule("cpu", aten.convolution_backward.default)
def convolution_backward(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    a = _args(args, kwargs, _BACKWARD)
    mask = [bool(m) for m in a["output_mask"]]
    cv = _geometry(a["input"], a["weight"], a["stride"], a["padding"], a["dilation"], a["groups"], mask[2])
    backend = _backend(cv) if cv is not None and not a["transposed"] else None
    if cv is None or backend is None:
        return None
    if backend == "mkldnn_bf16" and not bf16_backward_modelled(cv, mask[0], mask[1] or mask[2]):
        return None
    ws = _contiguous_copies(a["grad_output"], a["input"])
    if backend not in ("mkldnn", "mkldnn_bf16"):
        _slow_backward(ws, cv, backend == "dilated2d", mask)
        return ws
    if mask[0]:
        _backward_data(ws, cv)
    if mask[1] or mask[2]:
        _backward_weights(ws, cv, mask[2])
    return ws


def _rup16(v: int) -> int:
    return -(-v // 16) * 16


def _contiguous_copies(*tensors: Any) -> Workspace:
    """`.contiguous()` of a strided operand: a copy made first and held until the kernel returns."""
    ws = Workspace()
    for t in tensors:
        if isinstance(t, torch.Tensor) and not t.is_contiguous():
            ws.alloc(t.numel() * t.element_size())
    return ws


_FORWARD = (
    "input", "weight", "bias", "stride", "padding", "dilation", "transposed", "output_padding", "groups",
)  # fmt: skip
_BACKWARD = (
    "grad_output", "input", "weight", "bias_sizes", "stride", "padding", "dilation", "transposed",
    "output_padding", "groups", "output_mask",
)  # fmt: skip


def _args(args: Any, kwargs: Any, names: tuple[str, ...]) -> dict[str, Any]:
    found = dict(zip(names, args, strict=False))
    found.update({k: v for k, v in (kwargs or {}).items() if k in names})
    return found
