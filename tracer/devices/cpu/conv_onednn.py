"""oneDNN's blocking arithmetic for the CPU convolution rules (`conv.py`): which kernel runs each pass, the
channel-blocked layouts it reorders into, and the scratchpad it books.

The kernels follow oneDNN 3.x as bundled with PyTorch 2.13: jit:avx512_core (direct; plain source below 16
input channels), jit_1x1, jit_dw, brgconv_strided (strided backward-data, NHWC), jit:avx2 (backward-weights
of 4-15 channels or 8-channel groups) and gemm (the fallback). Scratchpads: weight-reduction copies per
minibatch thread, barriers, reducers, im2col columns, as each kernel's `init_scratchpad` books them (entries
aligned as oneDNN's registry aligns them). The channel block is 16 floats where oneDNN may use AVX-512 and 8
on AVX2 (`channel_block`). No rule is registered here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from . import isa as cpu_isa
from .cfloat import cdiv as _cdiv
from .cfloat import rup as _rup

_ALIGN = 128  # oneDNN scratchpad entries are aligned to 128 bytes (memory_tracking.hpp)
_PAGE = 4096  # page-aligned entries (brgemm buffers)
_BARRIER = 2 * _PAGE  # one simple_barrier::ctx_t: 4096 bytes, aligned to 4096


def entry(nbytes: int, align: int = _ALIGN) -> int:
    """Bytes one scratchpad entry takes in oneDNN's registry (size plus its alignment), 0 if empty."""
    return nbytes + align if nbytes > 0 else 0


@functools.cache
def channel_block() -> int:
    """oneDNN's channel block for fp32: 16 where it may use avx512_core (F, BW, VL, DQ), 8 below (AVX2).

    oneDNN decides (`cpu_isa.mayiuse`: the CPU's features, capped by ONEDNN_MAX_CPU_ISA); ATen's
    capability (ATEN_CPU_CAPABILITY) does not change it.
    """
    return 16 if cpu_isa.mayiuse("avx512_core") else 8


def onednn_modelled() -> bool:
    """Whether oneDNN's x86 convolution kernels (AVX2 or AVX-512) are the ones this process runs."""
    return cpu_isa.mayiuse("avx2")


def _block() -> int:
    return channel_block()


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Conv:
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


# --------------------------------------------------------------------------- oneDNN layouts


@dataclass(frozen=True)
class Blocked:
    """Element counts of the blocked operands one oneDNN kernel works on (0: the plain tensor is used)."""

    src: int  # the reordered input, or the blocked diff-input
    wei: int  # the reordered weights, or the blocked diff-weights
    dst: int  # the blocked output, or the reordered diff-output


# Which oneDNN kernel runs each pass. Kinds: "direct" (jit:avx512_core), "first" (its variant for fewer
# than 16 input channels: plain NCHW source), "1x1" (jit_1x1), "dw" (jit_dw), "brg" (brgconv_strided,
# NHWC), "avx2" (jit:avx2, 8-channel blocks), "gemm" (im2col + GEMM on the plain tensors).


def _ext(cv: Conv) -> tuple[int, int]:
    """The dilated kernel's extent (height, width)."""
    return cv.dh * (cv.kh - 1) + 1, cv.dw * (cv.kw - 1) + 1


def _pads(cv: Conv) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding as oneDNN sees it; bottom/right may be negative."""
    ext_h, ext_w = _ext(cv)
    bottom = (cv.ho - 1) * cv.sh + ext_h - cv.h - cv.ph
    right = (cv.wo - 1) * cv.sw + ext_w - cv.w - cv.pw
    return cv.ph, bottom, cv.pw, right


def _outside(cv: Conv) -> bool:
    """Some output sees only padding: the jit kernels refuse."""
    t, b, left, r = _pads(cv)
    ext_h, ext_w = _ext(cv)
    return ext_h <= max(t, b) or ext_w <= max(left, r)


def _odd_groups(cv: Conv, simd: int) -> bool:
    """A grouped (not depthwise) convolution whose per-group channels do not fill `simd`-wide blocks."""
    return cv.g > 1 and not cv.depthwise and bool((cv.c // cv.g) % simd or (cv.o // cv.g) % simd)


def _is_1x1(cv: Conv) -> bool:
    """jit_1x1 applies: unpadded 1x1, strides only when they divide the input (reduce-to-unit-stride)
    and only without groups."""
    unit = cv.ho == cv.h and cv.wo == cv.w and not cv.strided
    rtus = cv.ho * cv.sh == cv.h and cv.wo * cv.sw == cv.w and cv.g == 1
    return cv.kh == cv.kw == 1 and cv.ph == cv.pw == 0 and (unit or rtus)


def _dilated(cv: Conv) -> bool:
    return cv.dh > 1 or cv.dw > 1


def forward_kind(cv: Conv) -> str:
    if _outside(cv) or _odd_groups(cv, 4):
        return "gemm"
    if cv.depthwise:
        return "dw" if _unroll_ok(cv, 6) else "gemm"
    if _is_1x1(cv):
        return "1x1"
    if not _unroll_ok(cv, 28):
        return "gemm"
    return "first" if cv.g == 1 and cv.c < _block() else "direct"


def _unroll_ok(cv: Conv, ur_max: int) -> bool:
    """The jit kernels unroll `ur_w` output columns; the left/right padding must fit in one unroll."""
    ur = min(ur_max, cv.wo)
    ext_w = _ext(cv)[1]
    r_pad = (cv.wo - cv.wo % ur - 1) * cv.sw + ext_w - cv.w - cv.pw
    return cv.pw <= ur and r_pad <= ur


def data_kind(cv: Conv) -> str:
    if cv.depthwise:
        return "gemm" if _dilated(cv) else "dw"
    if cv.strided and not _dilated(cv) and (cv.g == 1 or cv.o // cv.g > 16):
        return "brg"  # grouped only with more than 16 output channels a group
    if _outside(cv) or _odd_groups(cv, 4):
        return "gemm"
    if _is_1x1(cv):
        return "1x1"
    return "gemm" if cv.strided and _dilated(cv) else "direct"


def weights_kind(cv: Conv) -> str:
    """As forward, except: the first-convolution kernel takes 1 to 3 channels (4 to 15 go to the AVX2
    kernel), and dilation with strides or beyond the input, large padding and depthwise kernels wider
    than 3 or dilated fall back to GEMM."""
    if _outside(cv):
        return "gemm"
    if cv.depthwise:
        return "dw" if _dw_weights_ok(cv) else "gemm"
    if _is_1x1(cv) and not _odd_groups(cv, 16):
        return "1x1"
    ext_h, ext_w = _ext(cv)
    if (_dilated(cv) and (cv.strided or ext_h > cv.h or ext_w > cv.w)) or not _bounds_ok(cv) or cv.kw > 14:
        return "gemm"
    if _block() != 16 and _dilated(cv):
        return "gemm"  # the AVX2 kernel does not dilate
    if cv.g == 1 and cv.c < 16:
        return "first" if cv.c <= 3 else ("gemm" if _dilated(cv) else "avx2")
    if _odd_groups(cv, 16):
        return "gemm" if _odd_groups(cv, 8) or _dilated(cv) else "avx2"
    return "direct"


def _bounds_ok(cv: Conv) -> bool:
    t, b, left, r = _pads(cv)
    ext_h, ext_w = _ext(cv)
    return t <= ext_h // 2 and max(0, b) <= ext_h // 2 and left < ext_w and r < ext_w and max(left, r) <= 28


def _dw_weights_ok(cv: Conv) -> bool:
    """jit_uni_dw_conv_bwd_weights: no dilation, kw <= 3, padding at most half the kernel."""
    t, b, left, r = _pads(cv)
    b, r = max(0, b), max(0, r)
    shape_ok = (
        cv.ho == (cv.h + t + b - cv.kh) // cv.sh + 1 and cv.wo == (cv.w + left + r - cv.kw) // cv.sw + 1
    )
    pads_ok = max(t, b) <= cv.kh // 2 and max(left, r) <= cv.kw // 2 and cv.h >= cv.kh + (-t) % cv.sh
    even_ok = (t <= 1 or t % cv.sh == 0) and (b <= 1 or b % cv.sh == 0)
    return not _dilated(cv) and cv.kw <= 3 and cv.sw <= cv.kw and shape_ok and pads_ok and even_ok


def layout(cv: Conv, kind: str) -> Blocked:
    b = _block()
    k = cv.kh * cv.kw
    if kind == "gemm":
        return Blocked(0, 0, 0)
    if kind == "avx2":  # 8-channel blocks within each group
        o, c = _rup(cv.o // cv.g, 8), _rup(cv.c // cv.g, 8)
        return Blocked(cv.n * cv.g * c * cv.h * cv.w, cv.g * o * c * k, cv.n * cv.g * o * cv.ho * cv.wo)
    if kind == "dw":
        g = _rup(cv.g, b)
        return Blocked(cv.n * g * cv.h * cv.w, g * k, cv.n * g * cv.ho * cv.wo)
    if cv.g > 1:  # grouped: per-group channels blocked by 16, 8 or 4, no padding
        return Blocked(cv.n * cv.c * cv.h * cv.w, cv.o * (cv.c // cv.g) * k, cv.n * cv.o * cv.ho * cv.wo)
    o, c = _rup(cv.o, b), _rup(cv.c, b)
    if kind == "first":
        return Blocked(0, o * cv.c * k, cv.n * o * cv.ho * cv.wo)
    return Blocked(cv.n * c * cv.h * cv.w, o * c * k, cv.n * o * cv.ho * cv.wo)


def _padded_bias(cv: Conv) -> int:
    o = _rup(cv.o, _block())
    return entry(cv.bytes(o)) if cv.bias and o != cv.o else 0


def _rtus(cv: Conv, nthr: int, blocks: int) -> int:
    """1x1 with strides: the source subsampled to unit stride, `blocks` channel blocks per thread."""
    if not cv.strided:
        return 0
    return entry(cv.bytes(nthr * blocks * _block() * cv.ho * cv.wo))


def _columns(cv: Conv) -> int:
    """im2col columns of one image and group; none for a 1x1 unit-stride unpadded kernel."""
    if cv.kh == cv.kw == 1 and not cv.strided and cv.ho == cv.h and cv.wo == cv.w:
        return 0
    return (cv.c // cv.g) * cv.kh * cv.kw * cv.ho * cv.wo


# --------------------------------------------------------------------------- scratchpads


def forward_scratch(cv: Conv, kind: str) -> int:
    if kind == "gemm":  # im2col columns, one image per thread
        return entry(cv.bytes(cv.nthr * _columns(cv)))
    rtus = _rtus(cv, cv.nthr, _cdiv(cv.c, _block())) if kind == "1x1" else 0
    return _padded_bias(cv) + rtus


def data_scratch(cv: Conv, kind: str) -> int:
    if kind == "1x1":
        return _rtus(cv, cv.nthr, _cdiv(cv.c, _block()))
    if kind != "gemm":
        return 0
    return entry(cv.bytes(_gemm_data_threads(cv) * _columns(cv)))


def _gemm_data_threads(cv: Conv) -> int:
    """gemm_convolution_utils: backward-data threads over images and groups, or inside the GEMM."""
    nthr, ic, oc = cv.nthr, cv.c // cv.g, cv.o // cv.g
    os, is_ = cv.ho * cv.wo, cv.h * cv.w
    outer = cv.g * cv.n
    inner = _cdiv(is_, 16) * _cdiv(ic, 16)
    eff = (outer / _rup(outer, nthr)) / (inner / _rup(inner, nthr))
    use = (os // nthr < 512 or cv.kh * cv.kw < 64) and (cv.n != 1 or cv.g > 2)
    return nthr if use and (eff >= 1 or is_ * ic * oc // nthr < 64 * 1024) else 1


def brgemm_weights(cv: Conv) -> int:
    """brgconv_strided's weights: input channels a group blocked by 16, or by 32 above 16."""
    c = cv.c // cv.g
    c = _rup(c, 16 if c <= 16 else 32)
    return cv.o * c * cv.kh * cv.kw


def brgemm_scratch(cv: Conv, vnni: int = 1) -> int:
    """jit_brgemm_conv_bwd_utils: per-thread padded diff-dst copy, its mask and the batch (a page each).
    An uneven width runs transposed, its copy's channels padded to `vnni` (2 in bf16)."""
    ext_h, ext_w = _ext(cv)
    t, b, left, r = _pads(cv)
    ohp = cv.ho + max(0, ext_h - 1 - t) // cv.sh + max(0, ext_h - 1 - b) // cv.sh
    owp = cv.wo + max(0, ext_w - 1 - left) // cv.sw + max(0, ext_w - 1 - r) // cv.sw
    inp = _rup(ohp * owp * (_rup(cv.o, vnni) if cv.w % cv.sw else cv.o), _PAGE)
    batch = _rup(_PAGE, 40)  # a page of 40-byte brgemm batch elements per thread, rounded to whole ones
    total = (
        entry(cv.bytes(cv.nthr * inp), _PAGE) + entry(cv.nthr * _PAGE, _PAGE) + entry(cv.nthr * batch, _PAGE)
    )
    if cv.w % cv.sw:  # uneven width: transposed execution with an output buffer of whole rows, the row
        # block (`iw_block`) being the width rounded up to the stride
        total += entry(cv.bytes(cv.nthr * _rup(_rup(cv.w, cv.sw) * cv.sw * cv.c, _PAGE)), _PAGE)
    return total


def _gemm_weights_scratch(cv: Conv) -> int:
    """gemm_convolution_utils: a weights reduction buffer (booked at four times its size) and im2col
    columns, per thread when the work is split over images and groups."""
    outer = (cv.ho * cv.wo) // cv.nthr < 256 and (cv.n != 1 or cv.g > 2)
    nthr = cv.nthr if outer else 1
    wei = cv.o * (cv.c // cv.g) * cv.kh * cv.kw
    return entry(cv.bytes(4 * nthr * wei)) + entry(cv.bytes(nthr * _columns(cv)))


def weights_scratch(cv: Conv, kind: str) -> int:
    if kind == "gemm":
        return _gemm_weights_scratch(cv)
    if _block() != 16:  # AVX2 oneDNN: its direct kernel's reducers; 1x1 and depthwise not modelled
        return _avx2_scratch(cv) if kind in ("direct", "first", "avx2") else 0
    if kind == "dw":
        return _dw_scratch(cv)
    if kind == "1x1":
        return _1x1_scratch(cv)
    if kind == "avx2":
        return _avx2_scratch(cv)
    return _direct_scratch(cv, kind == "first")


def _dw_scratch(cv: Conv) -> int:
    g = _rup(cv.g, 16)
    nthr_g = min(g // 16, cv.nthr)
    nthr_mb = min(max(1, cv.nthr // nthr_g), cv.n)
    if nthr_mb == 1:
        return 0
    bias = entry(4 * g * (nthr_mb - 1)) if cv.bias else 0
    return entry(4 * g * cv.kh * cv.kw * (nthr_mb - 1)) + bias


def _direct_scratch(cv: Conv, first: bool) -> int:
    """jit_avx512_common_conv_bwd_weights: a weights+bias copy per extra minibatch thread, a barrier,
    the bias reducer."""
    ic = cv.c // cv.g if first or cv.g > 1 else _rup(cv.c, 16)
    oc = cv.o // cv.g if cv.g > 1 else _rup(cv.o, 16)
    nthr_mb, nthr = _direct_balance(cv, ic, oc, ic if first else 16)
    total = _padded_bias(cv)
    if nthr_mb > 1:
        wei = cv.g * oc * ic * cv.kh * cv.kw + cv.g * oc
        total += entry(4 * wei * (nthr_mb - 1)) + _BARRIER
    if cv.bias:
        total += _reducer(nthr, 16, cv.g * oc // 16, cv.n, nthr * 3 * 5 * 5 * 16 * 16)
    return total


def _direct_balance(cv: Conv, ic: int, oc: int, ic_block: int) -> tuple[int, int]:
    """`jit_avx512_common_conv_bwd_weights_kernel_f32_t::balance`: (minibatch threads, all threads)."""
    if cv.nthr < cv.g:
        return 1, cv.nthr
    nthr = cv.nthr // cv.g
    two_d = cv.dh == 1 and cv.ho > 9  # harness_2d_reduction: the reduction also runs over output rows
    ih_r, oh_r, ih_n, oh_n = (cv.h, cv.ho, 1, 1) if two_d else (1, 1, cv.h, cv.ho)
    nb_ic, nb_oc = ic // ic_block, oc // 16

    def mem(s: tuple[int, int, int]) -> int:
        mb, ocb, icb = s
        return (
            _cdiv(cv.n * ih_r, mb) * _cdiv(nb_ic, icb) * ic_block * ih_n * cv.w // cv.sh // cv.sw
            + _cdiv(cv.n * oh_r, mb) * _cdiv(nb_oc, ocb) * 16 * oh_n * cv.wo
            + 8 * _cdiv(nb_oc, ocb) * _cdiv(nb_ic, icb) * cv.kh * cv.kw * ic_block * 16
        )

    def comp(s: tuple[int, int, int]) -> int:
        return _cdiv(cv.n * oh_r, s[0]) * _cdiv(nb_oc, s[1]) * _cdiv(nb_ic, s[2])

    mb_max = cv.n * max(1, oh_r // 9)
    splits = _splits(nthr, min(nthr, mb_max), nb_oc, nb_ic)
    best = (1, 1, 1)
    best_mem = mem(best)
    for s in splits:
        if mem(s) <= best_mem:
            best, best_mem = s, mem(s)
    best_comp = comp(best)
    for s in splits:
        if (comp(s) <= best_comp and mem(s) < 1.1 * best_mem) or 4 * comp(s) <= 3 * best_comp:
            best, best_comp = s, comp(s)
    nthr_mb = best[0]
    if cv.nthr // 2 < nthr_mb < cv.nthr:
        nthr_mb = min(mb_max, cv.nthr)
    return nthr_mb, nthr_mb * cv.g * best[1] * best[2]


def _splits(nthr: int, mb_max: int, nb_oc: int, nb_ic: int) -> list[tuple[int, int, int]]:
    """Candidate (minibatch, oc-block, ic-block) thread splits, in oneDNN's search order."""
    out = []
    for mb in range(1, mb_max + 1):
        par = nthr // mb
        for ocb in range(1, min(par, nb_oc) + 1):
            out.append((mb, ocb, min(par // ocb, nb_ic)))
    return out


def _1x1_scratch(cv: Conv) -> int:
    """jit_avx512_common_1x1 backward weights: weights reduction, bias reducer, rtus copy of the source."""
    nb_ic, nb_oc = _cdiv(cv.c, 16), _cdiv(cv.o, 16)
    nthr_mb, nthr = _1x1_balance(cv, nb_ic, nb_oc)
    total = _padded_bias(cv) + _rtus(cv, nthr, _best_divider(nb_ic, 5, nb_ic, False))
    if nthr_mb > 1:
        total += entry(4 * 256 * nb_ic * nb_oc * (nthr_mb - 1)) + _BARRIER
    if cv.bias:
        total += _reducer(nthr, 16, nb_oc, cv.n, nthr * 3 * 5 * 5 * 16 * 16)
    return total


def _1x1_balance(cv: Conv, nb_ic: int, nb_oc: int) -> tuple[int, int]:
    """`jit_avx512_common_1x1_conv_kernel_t::balance`: (minibatch threads, all threads)."""
    if cv.nthr < cv.g:
        return 1, 1
    reduce_dim = cv.ho * cv.wo
    block = _best_divider(reduce_dim, 7, 16, True)
    if reduce_dim % block:
        block = _best_divider(cv.wo, 4, cv.wo, False)
    block = 1 if block > 256 else block
    nb_reduce = _cdiv(reduce_dim, block)

    def mem(s: tuple[int, int, int]) -> int:
        n = _cdiv(cv.n * nb_reduce, s[0])
        ocb, icb = _cdiv(nb_oc, s[1]), _cdiv(nb_ic, s[2])
        return n * icb * 16 * block + n * ocb * 16 * block + 12 * 256 * ocb * icb

    best = (1, 1, 1)
    best_mem = mem(best)
    for s in _splits(cv.nthr, min(cv.nthr, cv.n * nb_reduce), nb_oc, nb_ic):
        if mem(s) <= best_mem:
            best, best_mem = s, mem(s)
    nthr_mb = best[0]
    if cv.nthr // 2 < nthr_mb < cv.nthr:
        nthr_mb = min(cv.n, cv.nthr)
    return nthr_mb, nthr_mb * best[1] * best[2]


def _avx2_scratch(cv: Conv) -> int:
    """jit_avx2_convolution_bwd_weights: reducers for the weights and the bias gradients."""
    nb_ic, nb_oc = _cdiv(cv.c // cv.g, 8), _cdiv(cv.o // cv.g, 8)
    total = _reducer(cv.nthr, cv.kh * cv.kw * 64, cv.g * nb_ic * nb_oc, cv.n, 1 << 21)
    if cv.bias:
        total += _reducer(cv.nthr, 8, cv.g * nb_oc, cv.n, 1 << 21) + (entry(4 * nb_oc * 8) if cv.o % 8 else 0)
    return total


def _reducer(nthr: int, job: int, njobs: int, reduction: int, max_buffer: int) -> int:
    """cpu_reducer_t scratchpad (`reduce_balancer_t::balance`): per-thread space and one barrier a group."""
    max_jobs = max(1, max_buffer // (nthr * job))
    per_group = max(1, njobs // nthr)
    groups = min(njobs // per_group, nthr)
    thr = min(nthr // groups, reduction)
    ub = _cdiv(njobs, groups)
    cost = njobs * job * reduction
    for c in range(per_group, njobs):
        c_groups = min(njobs // c, nthr)
        c_thr = min(nthr // c_groups, reduction)
        c_ub = _cdiv(njobs, c_groups)
        if c_thr > 1 and c_ub > max_jobs:
            continue
        c_cost = job * c_ub * (_cdiv(reduction, c_thr) + (c_thr != 1))
        if c_cost < cost:
            groups, thr, ub, cost = c_groups, c_thr, c_ub, c_cost
    if thr == 1:
        return 0
    return entry(4 * groups * (thr - 1) * ub * job, _PAGE) + groups * _PAGE + _PAGE


def _best_divider(value: int, lo: int, hi: int, find_max: bool) -> int:
    hi = max(1, min(hi, value))
    lo = max(1, min(lo, hi))
    best, best_loss = hi, float("inf")
    for d in range(hi, lo - 1, -1):
        loss = (_rup(value, d) - value) / _rup(value, d)
        if (find_max and loss < best_loss) or (not find_max and loss <= best_loss):
            best, best_loss = d, loss
    return best
