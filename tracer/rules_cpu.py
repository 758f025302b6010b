"""Kernel-internal buffers of PyTorch's CPU kernels, as the CPU allocator sees them.

Each rule is checked against the profiler's allocation events (tests/test_rules_cpu.py).

Convolution (`aten.convolution`, `aten.convolution_backward`) picks its backend as
`ConvParams::use_mkldnn` does (aten/src/ATen/native/Convolution.cpp). On oneDNN (fp32, NCHW) every
operand is reordered into a channel-blocked layout (nChw16c, channels padded to the block), the result
is computed in a blocked buffer and copied into the real output (`mkldnn_to_dense`); kernels also book a
scratchpad. Sizes follow oneDNN v3.x as bundled with PyTorch 2.13 (jit:avx512_core direct, jit_1x1,
jit_dw, brgconv_strided for strided backward-data) and were measured on an AVX-512 machine.
Assumption: the channel block is 16 floats when `torch.backends.cpu.get_cpu_capability()` reports AVX512
and 8 otherwise (AVX2 kernels); the scratchpads are modelled for the AVX-512 kernels only. Thread counts
come from `torch.get_num_threads()` (oneDNN uses the same OpenMP pool). The slow paths
(`_slow_conv2d_*`, `slow_conv_dilated2d`) allocate im2col columns. Channels-last inputs, transposed,
3-d and reduced-precision convolutions are not modelled (no rule: outputs only).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from memtrace.tracer.devices import Workspace, rule

_ALIGN = 128  # oneDNN scratchpad entries are aligned to 128 bytes (memory_tracking.hpp)
_PAGE = 4096  # page-aligned entries (brgemm buffers)
_BARRIER = 2 * _PAGE  # one simple_barrier::ctx_t: 4096 bytes, aligned to 4096


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _rup(a: int, b: int) -> int:
    return _cdiv(a, b) * b


def _entry(nbytes: int, align: int = _ALIGN) -> int:
    """Bytes one scratchpad entry takes in oneDNN's registry (size plus its alignment), 0 if empty."""
    return nbytes + align if nbytes > 0 else 0


def _block() -> int:
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Conv:
    """A 2-d convolution (1-d is viewed as 2-d with height 1, as `_convolution` does)."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    g: int
    ho: int
    wo: int
    elem: int
    bias: bool
    dtype: torch.dtype
    plain: bool  # input and weight are not channels-last (the only layout modelled on oneDNN)
    nthr: int

    @property
    def depthwise(self) -> bool:
        return self.g > 1 and self.g == self.c == self.o

    @property
    def strided(self) -> bool:
        return self.sh > 1 or self.sw > 1

    def bytes(self, elems: int) -> int:
        return elems * self.elem


def _ints(v: Any) -> list[int]:
    return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]


def _hw(v: Any, spatial: int, default: int) -> tuple[int, int]:
    """(height, width) of a stride/padding/dilation; 1-d convolutions get `default` for the height."""
    vals = _ints(v)
    return (default, vals[-1]) if spatial == 1 else (vals[0], vals[-1])


def _geometry(
    x: Any, wt: Any, stride: Any, padding: Any, dilation: Any, groups: Any, bias: bool
) -> _Conv | None:
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
    return _Conv(
        n, c, int(h), int(w), o, int(kh), int(kw), sh, sw, ph, pw, dh, dw, int(groups), int(ho), int(wo),
        x.element_size(), bias, x.dtype, plain, nthr,
    )  # fmt: skip


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _backend(cv: _Conv) -> str | None:
    """`_select_conv_backend` on the CPU for what is modelled: "mkldnn", "slow2d", "dilated2d" or None."""
    if cv.dtype == torch.float32:
        if _use_mkldnn(cv):
            return "mkldnn" if cv.plain else None
    elif cv.dtype in (torch.bfloat16, torch.float16):
        return None  # oneDNN in reduced precision: other kernels, not modelled
    if cv.g > 1 or not cv.plain:
        return None
    return "dilated2d" if cv.dh > 1 or cv.dw > 1 else "slow2d"


def _use_mkldnn(cv: _Conv) -> bool:
    if not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return False
    dilated = cv.dh > 1 or cv.dw > 1
    not_1x1 = cv.kh != 1 or cv.kw != 1
    fast_1x1 = cv.strided or dilated or cv.n >= 16 or not_1x1 or cv.nthr > 1
    big = cv.g > 1 or (cv.kh > 3 and cv.kw > 3) or cv.n > 1 or cv.n * cv.c * cv.h * cv.w > 20480
    return fast_1x1 and big


# --------------------------------------------------------------------------- oneDNN layouts


@dataclass(frozen=True)
class _Blocked:
    """Element counts of the blocked operands one oneDNN kernel works on."""

    src: int  # the reordered input (0: the kernel reads the plain input)
    wei: int  # the reordered (or blocked diff-) weights
    dst: int  # the blocked output / diff-output
    kind: str  # "direct", "first", "1x1", "dw", "gemm"


def _kind(cv: _Conv) -> str:
    ext_h, ext_w = cv.dh * (cv.kh - 1) + 1, cv.dw * (cv.kw - 1) + 1
    if cv.depthwise:
        return "dw"
    if ext_w <= cv.pw or ext_h <= cv.ph:
        return "gemm"  # the kernel would lie wholly in the padding: jit kernels refuse
    if cv.kh == cv.kw == 1 and cv.ph == cv.pw == 0 and cv.ho * cv.sh == cv.h and cv.wo * cv.sw == cv.w:
        return "1x1"
    if cv.g == 1 and cv.c < _block():
        return "first"  # plain NCHW source, weights Ohwi16o
    return "direct"


def _layout(cv: _Conv, kind: str) -> _Blocked:
    b = _block()
    k = cv.kh * cv.kw
    if kind == "gemm":
        return _Blocked(0, 0, cv.n * cv.o * cv.ho * cv.wo, kind)
    if kind == "dw":
        g = _rup(cv.g, b)
        return _Blocked(cv.n * g * cv.h * cv.w, g * k, cv.n * g * cv.ho * cv.wo, kind)
    if cv.g > 1:  # grouped: per-group channels blocked by 16, 8 or 4, no padding
        return _Blocked(
            cv.n * cv.c * cv.h * cv.w, cv.o * (cv.c // cv.g) * k, cv.n * cv.o * cv.ho * cv.wo, kind
        )
    o, c = _rup(cv.o, b), _rup(cv.c, b)
    if kind == "first":
        return _Blocked(0, o * cv.c * k, cv.n * o * cv.ho * cv.wo, kind)
    return _Blocked(cv.n * c * cv.h * cv.w, o * c * k, cv.n * o * cv.ho * cv.wo, kind)


def _padded_bias(cv: _Conv) -> int:
    o = _rup(cv.o, _block())
    return _entry(cv.bytes(o)) if cv.bias and o != cv.o else 0


def _rtus(cv: _Conv, nthr: int, blocks: int) -> int:
    """1x1 with strides: the source subsampled to unit stride, `blocks` channel blocks per thread."""
    if not cv.strided:
        return 0
    return _entry(cv.bytes(nthr * blocks * _block() * cv.ho * cv.wo))


# --------------------------------------------------------------------------- forward


def _mkldnn_forward(ws: Workspace, cv: _Conv) -> None:
    kind = _kind(cv)
    lay = _layout(cv, kind)
    scratch = ws.alloc(_forward_scratch(cv, kind))
    src = ws.alloc(cv.bytes(lay.src))
    wei = ws.alloc(cv.bytes(lay.wei))
    dst = ws.alloc(cv.bytes(lay.dst))
    for key in (wei, src, scratch):
        ws.free(key)
    ws.output(0)
    ws.free(dst)


def _forward_scratch(cv: _Conv, kind: str) -> int:
    if kind == "gemm":  # im2col columns, one image per thread
        return _entry(cv.bytes(cv.nthr * (cv.c // cv.g) * cv.kh * cv.kw * cv.ho * cv.wo))
    rtus = _rtus(cv, cv.nthr, _cdiv(cv.c, _block())) if kind == "1x1" else 0
    return _padded_bias(cv) + rtus


# --------------------------------------------------------------------------- backward data


def _backward_data(ws: Workspace, cv: _Conv) -> None:
    kind = _kind(cv)
    if cv.strided and kind not in ("dw", "gemm"):
        _backward_data_brgemm(ws, cv)
        return
    lay = _layout(cv, "direct" if kind == "first" else kind)
    gy = ws.alloc(cv.bytes(lay.dst))
    wei = ws.alloc(cv.bytes(lay.wei))
    gx = ws.alloc(cv.bytes(lay.src or cv.n * cv.c * cv.h * cv.w))
    ws.free(wei)
    ws.free(gy)
    ws.output(0)
    ws.free(gx)


def _backward_data_brgemm(ws: Workspace, cv: _Conv) -> None:
    """brgconv_strided: NHWC diff-dst and diff-src, then `mkldnn_to_dense` and a `.contiguous()` copy."""
    b = _block()
    gx_bytes = cv.bytes(cv.n * cv.c * cv.h * cv.w)
    gy = ws.alloc(cv.bytes(cv.n * cv.o * cv.ho * cv.wo))
    wei = ws.alloc(cv.bytes(cv.o * _rup(cv.c // cv.g, b) * cv.g * cv.kh * cv.kw))
    gx = ws.alloc(gx_bytes)
    scratch = ws.alloc(_brgemm_scratch(cv))
    for key in (scratch, wei, gy):
        ws.free(key)
    dense = ws.alloc(gx_bytes)
    ws.output(0)
    ws.free(dense)
    ws.free(gx)


def _brgemm_scratch(cv: _Conv) -> int:
    """jit_brgemm_conv_bwd_utils: per-thread padded diff-dst copy, its mask and the batch (a page each)."""
    ext_h, ext_w = cv.dh * (cv.kh - 1) + 1, cv.dw * (cv.kw - 1) + 1
    b_pad = (cv.ho - 1) * cv.sh + ext_h - cv.h - cv.ph
    r_pad = (cv.wo - 1) * cv.sw + ext_w - cv.w - cv.pw
    ohp = cv.ho + max(0, ext_h - 1 - cv.ph) // cv.sh + max(0, ext_h - 1 - b_pad) // cv.sh
    owp = cv.wo + max(0, ext_w - 1 - cv.pw) // cv.sw + max(0, ext_w - 1 - r_pad) // cv.sw
    inp = _rup(ohp * owp * cv.g * _rup(cv.o // cv.g, _block()), _PAGE)
    total = _entry(cv.bytes(cv.nthr * inp), _PAGE) + 2 * _entry(cv.nthr * _PAGE, _PAGE)
    if cv.w % cv.sw:  # uneven width: transposed execution with an output row buffer
        total += _entry(cv.bytes(cv.nthr * _rup(_rup(cv.w, cv.sw) * cv.c, _PAGE)), _PAGE)
    return total + 48


# --------------------------------------------------------------------------- backward weights


def _backward_weights(ws: Workspace, cv: _Conv, grad_bias: bool) -> None:
    kind = _kind(cv)
    lay = _layout(cv, kind)
    if kind == "gemm":
        gw = ws.alloc(cv.bytes(cv.o * (cv.c // cv.g) * cv.kh * cv.kw))
        scratch = ws.alloc(_forward_scratch(cv, kind))
        gb = ws.alloc(cv.bytes(cv.o) if grad_bias else 0)
        ws.free(scratch)
    else:
        gy = ws.alloc(cv.bytes(lay.dst))
        src = ws.alloc(cv.bytes(lay.src))
        gw = ws.alloc(cv.bytes(lay.wei))
        scratch = ws.alloc(_weights_scratch(cv, kind, grad_bias))
        gb = ws.alloc(cv.bytes(cv.o) if grad_bias else 0)
        for key in (scratch, src, gy):
            ws.free(key)
    ws.output(2)
    ws.output(1)
    ws.free(gw)
    ws.free(gb)


def _weights_scratch(cv: _Conv, kind: str, grad_bias: bool) -> int:
    if _block() != 16:
        return 0
    cv = replace(cv, bias=grad_bias)
    if kind == "dw":
        return _dw_scratch(cv)
    if kind == "1x1":
        return _1x1_scratch(cv)
    return _direct_scratch(cv, kind == "first")


def _dw_scratch(cv: _Conv) -> int:
    g = _rup(cv.g, 16)
    nthr_g = min(g // 16, cv.nthr)
    nthr_mb = min(max(1, cv.nthr // nthr_g), cv.n)
    if nthr_mb == 1:
        return 0
    bias = _entry(4 * g * (nthr_mb - 1)) if cv.bias else 0
    return _entry(4 * g * cv.kh * cv.kw * (nthr_mb - 1)) + bias


def _direct_scratch(cv: _Conv, first: bool) -> int:
    """jit_avx512_common_conv_bwd_weights: a weights+bias copy per extra minibatch thread, a barrier."""
    c = cv.c // cv.g if first or cv.g > 1 else _rup(cv.c, 16)
    o = cv.o // cv.g if cv.g > 1 else _rup(cv.o, 16)
    nthr_mb = _direct_nthr_mb(cv, c, o, cv.c if first else 16)
    if nthr_mb == 1:
        return _padded_bias(cv)
    wei = cv.g * o * c * cv.kh * cv.kw + cv.g * o
    return _entry(4 * wei * (nthr_mb - 1)) + _BARRIER + _padded_bias(cv)


def _direct_nthr_mb(cv: _Conv, ic: int, oc: int, ic_block: int) -> int:
    """`jit_avx512_common_conv_bwd_weights_kernel_f32_t::balance`: how many threads split the minibatch."""
    nthreads = cv.nthr
    if nthreads < cv.g:
        return 1
    nthr = nthreads // cv.g
    two_d = cv.dh == 1 and cv.h > 1 and cv.ho > 9
    ih_r, oh_r, ih_n, oh_n = (cv.h, cv.ho, 1, 1) if two_d else (1, 1, cv.h, cv.ho)
    nb_ic, nb_oc = ic // ic_block, oc // 16

    def mem(mb: int, ocb: int, icb: int) -> int:
        return (
            _cdiv(cv.n * ih_r, mb) * _cdiv(nb_ic, icb) * ic_block * ih_n * cv.w // cv.sh // cv.sw
            + _cdiv(cv.n * oh_r, mb) * _cdiv(nb_oc, ocb) * 16 * oh_n * cv.wo
            + 8 * _cdiv(nb_oc, ocb) * _cdiv(nb_ic, icb) * cv.kh * cv.kw * ic_block * 16
        )

    def comp(mb: int, ocb: int, icb: int) -> int:
        return _cdiv(cv.n * oh_r, mb) * _cdiv(nb_oc, ocb) * _cdiv(nb_ic, icb)

    splits = _splits(nthr, min(nthr, cv.n * max(1, oh_r // 9)), nb_oc, nb_ic)
    best = (1, 1, 1)
    best_mem = mem(*best)
    for s in splits:
        if mem(*s) <= best_mem:
            best, best_mem = s, mem(*s)
    best_comp = comp(*best)
    for s in splits:
        if (comp(*s) <= best_comp and mem(*s) < 1.1 * best_mem) or 4 * comp(*s) <= 3 * best_comp:
            best, best_comp = s, comp(*s)
    nthr_mb = best[0]
    if nthreads // 2 < nthr_mb < nthreads:
        nthr_mb = min(cv.n * max(1, oh_r // 9), nthreads)
    return nthr_mb


def _splits(nthr: int, mb_max: int, nb_oc: int, nb_ic: int) -> list[tuple[int, int, int]]:
    out = []
    for mb in range(1, mb_max + 1):
        par = nthr // mb
        for ocb in range(1, min(par, nb_oc) + 1):
            out.append((mb, ocb, min(par // ocb, nb_ic)))
    return out


def _1x1_scratch(cv: _Conv) -> int:
    """jit_avx512_common_1x1 backward weights: weights reduction, bias reducer, rtus copy of the source."""
    nb_ic, nb_oc = _cdiv(cv.c, 16), _cdiv(cv.o, 16)
    nthr_mb, nthr = _1x1_balance(cv, nb_ic, nb_oc)
    total = _padded_bias(cv) + _rtus(cv, nthr, _best_divider(nb_ic, 5, nb_ic, False))
    if nthr_mb > 1:
        total += _entry(4 * 256 * nb_ic * nb_oc * (nthr_mb - 1)) + _BARRIER
    if cv.bias:
        total += _bias_reducer(nthr, nb_oc, cv.n)
    return total


def _1x1_balance(cv: _Conv, nb_ic: int, nb_oc: int) -> tuple[int, int]:
    if cv.nthr < cv.g:
        return 1, 1
    reduce_dim = cv.ho * cv.wo
    block = _best_divider(reduce_dim, 7, 16, True)
    if reduce_dim % block:
        block = _best_divider(cv.wo, 4, cv.wo, False)
    block = 1 if block > 256 else block
    nb_reduce = _cdiv(reduce_dim, block)

    def mem(mb: int, ocb: int, icb: int) -> int:
        n = _cdiv(cv.n * nb_reduce, mb)
        return (
            n * _cdiv(nb_ic, icb) * 16 * block
            + n * _cdiv(nb_oc, ocb) * 16 * block
            + 12 * 256 * (_cdiv(nb_oc, ocb) * _cdiv(nb_ic, icb))
        )

    best = (1, 1, 1)
    best_mem = mem(*best)
    for s in _splits(cv.nthr, min(cv.nthr, cv.n * nb_reduce), nb_oc, nb_ic):
        if mem(*s) <= best_mem:
            best, best_mem = s, mem(*s)
    nthr_mb = best[0]
    if cv.nthr // 2 < nthr_mb < cv.nthr:
        nthr_mb = min(cv.n, cv.nthr)
    return nthr_mb, nthr_mb * best[1] * best[2]


def _bias_reducer(nthr: int, njobs: int, reduction: int) -> int:
    """cpu_reducer_t for the bias gradient (`reduce_balancer_t::balance`): per-thread space and barriers."""
    max_jobs = max(1, nthr * 3 * 5 * 5 * 16 * 16 // (nthr * 16))
    per_group = max(1, njobs // nthr)
    groups = min(njobs // per_group, nthr)
    thr_per_group = min(nthr // groups, reduction)
    ub = _cdiv(njobs, groups)
    cost = njobs * 16 * reduction
    for c in range(per_group, njobs):
        c_groups = min(njobs // c, nthr)
        c_thr = min(nthr // c_groups, reduction)
        c_ub = _cdiv(njobs, c_groups)
        if c_thr > 1 and c_ub > max_jobs:
            continue
        c_cost = 16 * c_ub * (_cdiv(reduction, c_thr) + (c_thr != 1))
        if c_cost < cost:
            groups, thr_per_group, ub, cost = c_groups, c_thr, c_ub, c_cost
    if thr_per_group == 1:
        return 0
    return _entry(4 * groups * (thr_per_group - 1) * ub * 16, _PAGE) + groups * _PAGE + _PAGE


def _best_divider(value: int, lo: int, hi: int, find_max: bool) -> int:
    hi = max(1, min(hi, value))
    lo = max(1, min(lo, hi))
    best, best_loss = hi, float("inf")
    for d in range(hi, lo - 1, -1):
        loss = (_rup(value, d) - value) / _rup(value, d)
        if (find_max and loss < best_loss) or (not find_max and loss <= best_loss):
            best, best_loss = d, loss
    return best


# --------------------------------------------------------------------------- slow paths


def _columns(cv: _Conv, images: int) -> int:
    """im2col columns; none for a 1x1 unit-stride unpadded kernel (it reads the input in place)."""
    if cv.kh == cv.kw == 1 and not cv.strided and cv.ph == cv.pw == 0:
        return 0
    return cv.bytes(images * cv.c * cv.kh * cv.kw * cv.ho * cv.wo)


def _slow_forward(ws: Workspace, cv: _Conv, dilated: bool) -> None:
    """`_slow_conv2d_forward`: columns for the whole batch, then the output; the dilated kernel: the
    output, then columns for one image at a time."""
    if dilated:
        ws.output(0)
        ws.free(ws.alloc(_columns(cv, 1)))
        return
    cols = ws.alloc(_columns(cv, cv.n))
    ws.output(0)
    ws.free(cols)


def _slow_backward(ws: Workspace, cv: _Conv, dilated: bool, mask: list[bool]) -> None:
    """The gradients first (input, bias, weight; the dilated kernel: input, weight, bias), then columns."""
    for i in (0, 1, 2) if dilated else (0, 2, 1):
        if mask[i]:
            ws.output(i)
    if mask[0] or mask[1]:
        ws.free(ws.alloc(_columns(cv, 1 if dilated else cv.n)))


# --------------------------------------------------------------------------- the rules


@rule("cpu", "aten.convolution.default")
def convolution(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    a = _args(args, kwargs, _FORWARD)
    has_bias = a.get("bias") is not None
    cv = _geometry(a["input"], a["weight"], a["stride"], a["padding"], a["dilation"], a["groups"], has_bias)
    backend = _backend(cv) if cv is not None and not a["transposed"] else None
    if cv is None or backend is None:
        return None
    ws = _contiguous_copies(a["input"])
    if backend == "mkldnn":
        _mkldnn_forward(ws, cv)
    else:
        _slow_forward(ws, cv, backend == "dilated2d")
    return ws


@rule("cpu", "aten.convolution_backward.default")
def convolution_backward(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    a = _args(args, kwargs, _BACKWARD)
    mask = [bool(m) for m in a["output_mask"]]
    cv = _geometry(a["input"], a["weight"], a["stride"], a["padding"], a["dilation"], a["groups"], mask[2])
    backend = _backend(cv) if cv is not None and not a["transposed"] else None
    if cv is None or backend is None:
        return None
    if backend != "mkldnn":
        ws = Workspace()
        _slow_backward(ws, cv, backend == "dilated2d", mask)
        return ws
    ws = _contiguous_copies(a["grad_output"], a["input"])
    if mask[0]:
        _backward_data(ws, cv)
    if mask[1] or mask[2]:
        _backward_weights(ws, cv, mask[2])
    return ws


def _contiguous_copies(*tensors: Any) -> Workspace:
    """`.contiguous()` of a strided operand: a copy made first and held until the kernel returns."""
    ws = Workspace()
    for t in tensors:
        if isinstance(t, torch.Tensor) and not t.is_contiguous():
            ws.alloc(t.numel() * t.element_size())
    return ws


_FORWARD = (
    "input",
    "weight",
    "bias",
    "stride",
    "padding",
    "dilation",
    "transposed",
    "output_padding",
    "groups",
)
_BACKWARD = (
    "grad_output", "input", "weight", "bias_sizes", "stride", "padding", "dilation", "transposed",
    "output_padding", "groups", "output_mask",
)  # fmt: skip


def _args(args: Any, kwargs: Any, names: tuple[str, ...]) -> dict[str, Any]:
    found = dict(zip(names, args, strict=False))
    found.update({k: v for k, v in (kwargs or {}).items() if k in names})
    return found
