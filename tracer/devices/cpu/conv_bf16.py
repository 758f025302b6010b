"""oneDNN's bfloat16 convolutions on AVX-512-BF16 (no AMX): the blocked operands and the scratchpads of
`jit_avx512_core_bf16_convolution_{fwd,bwd_data,bwd_weights}_t` and the 1x1 forward, as the CPU allocator
sees them inside `mkldnn_convolution` and `convolution_backward`.

PyTorch sends a bf16 convolution to oneDNN whenever `mkldnn_bf16_device_check()` holds (any size); on an
AVX-512-BF16 CPU without AMX (`cpu_isa.onednn_isa()` is avx512_core_bf16) oneDNN runs these kernels. Derived
from the allocator events recorded op by op on such a CPU (shared/measured/cpu-avx512-bf16, held in
tests/test_rules_isa.py) and oneDNN's `init_scratchpad`:

- the source is reordered to nChw16c (16 channels a block, padded) unless it has fewer than 16 channels
  (the first-layer kernel reads plain NCHW);
- the weights to OIhw8i16o2i: output channels padded to 16, input channels to 16, or to a pair (VNNI) below
  16; the output is computed blocked (padded to 16) and then copied into the dense result;
- scratchpad: a padded bias (when the output channels are padded) and, for 1x1, a float accumulation block
  per thread of (output channels padded to 16) x (output pixels).

- backward data: the direct kernel at unit stride (blocked diff-dst, weights and diff-src, channels padded
  to 16 even in a first layer; no scratchpad); brgconv_strided when strided (`bf16_data_brgemm`: NHWC,
  fp32's scratchpad plus a float accumulation buffer);
- backward weights (direct kernel): `bf16_weights_scratch`, ported from oneDNN v3.12's `init_conf`,
  `balance` (the thread split, computed in float as there) and `init_scratchpad`.
- 1x1 (`jit_avx512_core_bf16_1x1_conv_kernel`): backward data at unit stride, blocked operands plus a
  float store workspace per thread (`bf16_1x1_data_scratch`; strided: brgconv_strided with its 1x1 channel
  block); backward weights, its own `balance` (float weight buffers per minibatch thread, a barrier, the
  transposed operands below 15 rows, and when strided the reduce-to-unit-stride copy:
  `bf16_1x1_weights_scratch`); the strided forward's copy too (`bf16_forward_scratch`).

The backward passes were checked event for event against the allocator on such a CPU (oneDNN v3.12,
1 to 16 threads; tests/data/cpu-avx512-bf16/ops, held in tests/test_rules_isa.py). Not modelled here
(outputs only): a 1x1 first layer's weight gradient, the weight gradient of a strided 1x1 whose input
is not the output times the stride; a first layer's weight gradient with output channels not a
multiple of 16 (oneDNN's gemm fallback) or at least 124 wide (spatial blocking by L2 size), strided
with dilation, brgconv_strided where its jobs may not split evenly over the threads (`_data_brgemm_ok`:
its efficiency search then splits rows, not ported); grouped and depthwise, and channels-last bf16
convolutions; fp16; AMX (brgemm kernels) and AVX-512 without BF16 (emulated bf16). The 1x1 load groups
assume an L2 of 1 MiB a core (`_L2_ELEMS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from . import isa as cpu_isa
from .cfloat import cdiv as _cdiv
from .cfloat import f32 as _f32
from .cfloat import rup as _rup
from .conv_onednn import Blocked, Conv, brgemm_scratch
from .conv_onednn import entry as _entry

_BLOCK = 16
_L2_ELEMS = 1024 * 1024 // 2  # a 1 MiB L2 a core in bf16 elements (oneDNN's `L2_size`)


def bf16_modelled(cv: Conv) -> bool:
    """oneDNN's AVX-512-BF16 kernels run this bf16 convolution, and its shape is one modelled here."""
    return (
        cv.dtype == torch.bfloat16
        and cv.plain
        and cv.g == 1
        and torch.backends.mkldnn.is_available()
        and cpu_isa.onednn_isa() == "avx512_core_bf16"
    )


def is_1x1(cv: Conv) -> bool:
    return cv.kh == cv.kw == 1 and cv.ph == cv.pw == 0 and not cv.strided


def pointwise(cv: Conv) -> bool:
    """A 1x1 kernel, unpadded (any stride): oneDNN's 1x1 kernels take it."""
    return cv.kh == cv.kw == 1 and cv.ph == cv.pw == 0


def bf16_layout(cv: Conv) -> Blocked:
    """Element counts of the reordered source (0: plain), weights and blocked destination."""
    o = _rup(cv.o, _BLOCK)
    c = _rup(cv.c, _BLOCK) if cv.c >= _BLOCK else _rup(cv.c, 2)
    src = cv.n * c * cv.h * cv.w if cv.c >= _BLOCK else 0
    return Blocked(src, o * c * cv.kh * cv.kw, cv.n * o * cv.ho * cv.wo)


def bf16_data_layout(cv: Conv) -> Blocked:
    """The direct backward-data kernel's blocked diff-src, weights and diff-dst: channels padded to 16
    (a first layer's too: its diff-src is computed blocked, measured)."""
    o, c = _rup(cv.o, _BLOCK), _rup(cv.c, _BLOCK)
    return Blocked(cv.n * c * cv.h * cv.w, o * c * cv.kh * cv.kw, cv.n * o * cv.ho * cv.wo)


def bf16_forward_scratch(cv: Conv) -> int:
    """The padded bias (bf16) and, for 1x1, the per-thread float accumulation block; strided 1x1 (where
    `_rtus`): also the unit-stride copy of the source, per thread its channels (`nb_reduce` blocks) of
    the output pixels."""
    o = _rup(cv.o, _BLOCK)
    total = _entry(cv.bytes(o)) if cv.bias and o != cv.o else 0
    if is_1x1(cv) or (pointwise(cv) and _rtus(cv)):
        total += bf16_1x1_store(cv, o, _rup(cv.c, _BLOCK), cv.ho)
    if pointwise(cv) and _rtus(cv):
        total += _entry(cv.bytes(cv.nthr * _rup(cv.c, _BLOCK) * cv.ho * cv.wo))
    return total


# --------------------------------------------------------------------------- backward

_PAGE = 4096
_BARRIER_ALIGN = 4096  # a simple_barrier::ctx_t is 4096 bytes, aligned (and so booked) to 4096
_MAX_UR_W = 28  # jit_avx512_core_bf16_conv_bwd_weights_kernel_f32_t::max_ur_w
_FULL_SPAT_SET = 48 * 1024  # full_spat_opt_working_set_size


def _barriers(count: int) -> int:
    """`count` barrier contexts booked as one entry: their bytes plus their alignment."""
    return (count + 1) * _BARRIER_ALIGN


def _edges(cv: Conv) -> tuple[int, int, int, int, int, int]:
    """(left, right, top, bottom) padding as oneDNN computes it (end paddings at least 0), and the
    dilated kernel's extent (height, width)."""
    ext_h, ext_w = cv.dh * (cv.kh - 1) + 1, cv.dw * (cv.kw - 1) + 1
    right = max(0, (cv.wo - 1) * cv.sw + ext_w - cv.w - cv.pw)
    bottom = max(0, (cv.ho - 1) * cv.sh + ext_h - cv.h - cv.ph)
    return cv.pw, right, cv.ph, bottom, ext_h, ext_w


def _first(cv: Conv) -> bool:
    """`is_1stconv`: fewer than 16 input channels (one group): the source is read plain, not transposed."""
    return cv.c < _BLOCK


def _weights_ok(cv: Conv) -> bool:
    """`jit_avx512_core_bf16_conv_bwd_weights_kernel_f32_t::init_conf` accepts it (else oneDNN falls back
    to its gemm kernel, not modelled), and no spatial blocking can apply (a first layer at least 124 wide,
    where the choice depends on the L2 cache size; not modelled)."""
    left, right, top, bottom, ext_h, ext_w = _edges(cv)
    first = _first(cv)
    dilated_ok = (cv.dh == 1 or (cv.sh == 1 and ext_h <= cv.h)) and (cv.dw == 1 or cv.sw == 1)
    bounds_ok = left < ext_w and right < ext_w and top <= ext_h // 2 and bottom <= ext_h // 2
    first_ok = not first or (
        cv.o % _BLOCK == 0  # a first layer's output channels are not padded: whole blocks only
        and (cv.wo <= _MAX_UR_W or (left < _MAX_UR_W and ext_w <= cv.wo))
        and left < _MAX_UR_W
        and right < _MAX_UR_W
        and ext_w <= cv.w + 1
        and not (cv.wo >= 124 and cv.ho > 1)
    )
    return dilated_ok and bounds_ok and first_ok and cv.kw <= (24 if first else 14)


def _data_brgemm_ok(cv: Conv) -> bool:
    """brgconv_strided (a strided backward-data pass) as modelled: no dilation, every output sees some of
    the input, and its blocking search takes whole rows: it may (`max_iw_block_thr`), its jobs (images x
    channel blocks x row blocks, `_data_jobs`) split evenly over the threads and, with fewer jobs a thread
    than threads (`est_eff` then weighs each thread's channels), the channels fill their blocks or one
    block. Where not (5 images on 2 threads, 4 on 3, 48 channels in blocks of 32 on 4 threads), the search
    split the rows (measured): its efficiency estimate is not ported, so not modelled."""
    left, right, top, bottom, ext_h, ext_w = _edges(cv)
    block = _data_ic_block(cv)
    jobs = _data_jobs(cv)
    if cv.dh > 1 or cv.dw > 1 or ext_h <= max(top, bottom) or ext_w <= max(left, right) or jobs is None:
        return False
    balanced = jobs // cv.nthr >= cv.nthr or cv.c % block == 0 or cv.c <= block
    may = cv.n * _cdiv(cv.c, block) * cv.h * cv.w / (0.9 * cv.nthr) >= _rup(cv.w, cv.sw)
    return jobs % cv.nthr == 0 and balanced and may


def _data_jobs(cv: Conv) -> int | None:
    """brgconv_strided's work amount with whole rows: images x channel blocks x blocks of input rows, the
    row block (`iterate_ker_block`) cut to share the threads and grown to a divisor of the height (or a
    multiple of the stride). Where images x channel blocks already split evenly, row blocks keep it so;
    else the rows are split as the threads ask only if the L2 cache does not cut them further for any L2
    of 512 KiB or more (the per-core L2 is not read here): None where it might."""
    block = _data_ic_block(cv)
    blocks = cv.n * _cdiv(cv.c, block)
    if blocks % cv.nthr == 0:
        return blocks
    _, _, top, _, ext_h, ext_w = _edges(cv)
    bottom = (cv.ho - 1) * cv.sh + ext_h - cv.h - cv.ph  # unclamped, as brgemm_scratch
    right = (cv.wo - 1) * cv.sw + ext_w - cv.w - cv.pw
    ohp = cv.ho + max(0, ext_h - 1 - top) // cv.sh + max(0, ext_h - 1 - bottom) // cv.sh
    owp = cv.wo + max(0, ext_w - 1 - cv.pw) // cv.sw + max(0, ext_w - 1 - right) // cv.sw
    row_bytes = 2 * 2 * cv.o * owp + 2 * cv.w * block
    other = 2 * cv.kh * cv.kw * cv.o * block + 4 * 2 * 32 * block
    if ohp * row_bytes > 256 * 1024 or other > 256 * 1024:
        return None
    rows = _cdiv(cv.h, _cdiv(cv.nthr, blocks))
    while (rows % cv.sh or (cv.h % cv.sh == 0 and cv.h % rows)) and rows < cv.h:
        rows += 1
    return blocks * _cdiv(cv.h, rows)


def bf16_backward_modelled(cv: Conv, grad_input: bool, grad_weight: bool) -> bool:
    """The backward passes modelled: not 1x1 (oneDNN's 1x1 kernels); the input gradient by the direct
    kernel (unit stride) or brgconv_strided (`_data_brgemm_ok`); the weight gradient where the direct
    kernel takes it (`_weights_ok`)."""
    if pointwise(cv):  # the 1x1 kernel; strided data: brgconv_strided
        data_ok = not cv.strided or _data_brgemm_ok(cv)
        return (not grad_input or data_ok) and (not grad_weight or bf16_1x1_weights_ok(cv))
    if grad_input and cv.strided and not _data_brgemm_ok(cv):
        return False
    return not grad_weight or _weights_ok(cv)


# --- backward data, strided: brgconv_strided (jit_brgemm_conv_bwd_utils)


def _data_ic_block(cv: Conv) -> int:
    """The input-channel block of brgconv_strided: the largest of 64, 48, 32, 16 (at most the channels
    rounded up to 16) that `fast_check_ic_block` admits. oneDNN then picks by an efficiency estimate (not
    ported); the largest admitted won on every shape measured (16 to 256 channels, 1 to 16 threads).
    A 1x1 kernel (unpadded) has its own check: 64 with 64 input pixels a stride step or more, 48 where
    it pads the channels by under 5%."""
    rnd_ic = _rup(cv.c, _BLOCK)
    big_spatial = cv.ho * cv.wo > 81 * cv.sh * cv.sw
    for icb in range(min(_cdiv(cv.c, _BLOCK), 4), 1, -1):
        block = icb * _BLOCK
        if pointwise(cv):  # `fast_check_ic_block_1x1`
            if block == 64 and not (rnd_ic % 64 == 0 and cv.h * cv.w >= 64 * cv.sh * cv.sw):
                continue
            if block == 48 and _f32(cv.c / _rup(cv.c, 48)) < _f32(0.95):
                continue
            return block
        if block == 64 and not (rnd_ic % 64 == 0 and rnd_ic * 2 < 192 * 4):
            continue
        if block == 48 and not (rnd_ic % 48 == 0 and rnd_ic * 2 <= 384 * 4 and big_spatial):
            continue
        return block
    return _BLOCK


def bf16_data_brgemm(cv: Conv) -> tuple[int, int]:
    """brgconv_strided in bf16: its weights (BcdA<ic block>b2a: output channels in VNNI pairs, input
    channels padded to the block) and its scratchpad: fp32's (`brgemm_scratch`, the transposed execution
    of an uneven width padding the diff-dst copy's channels to a pair) plus the float accumulation buffer
    a bf16 diff-src needs, per thread `LDC x M`: the channel block times one row block of outputs,
    `ceil(iw_block / stride_w)`, with the row block the whole (stride-rounded) width as oneDNN's search
    picked on every shape measured."""
    block = _data_ic_block(cv)
    weights = _rup(cv.o, 2) * _rup(cv.c, block) * cv.kh * cv.kw
    row = _rup(cv.w, cv.sw)
    accumulation = 4 * cv.nthr * block * _cdiv(row, cv.sw) + _PAGE  # a page-aligned entry
    return weights, brgemm_scratch(cv, vnni=2) + accumulation


# --- backward weights: jit_avx512_core_bf16_conv_bwd_weights_kernel_f32_t


@dataclass(frozen=True)
class _Weights:
    """The fields of the kernel's `jit_conv_conf_t` its scratchpad and thread balance read."""

    ic: int  # channels as the kernel counts them: padded to 16, unless a first layer
    oc: int
    ic_block: int  # 16, or all the input channels of a first layer
    tr_pad: int  # guard elements after the transposed source
    tr_iw: int  # width of a transposed source row (the plain width for a first layer)
    tr_ow: int  # width of a transposed diff-dst row
    work: int  # nthr_mb_work: images x output rows, or images alone (the full-spatial harness)

    @property
    def nb_ic(self) -> int:
        return _cdiv(self.ic, self.ic_block)

    @property
    def nb_oc(self) -> int:
        return _cdiv(self.oc, _BLOCK)


def _weights_conf(cv: Conv) -> _Weights:
    left, right, top, bottom, _, _ = _edges(cv)
    first = _first(cv)
    ic, oc = (cv.c, cv.o) if first else (_rup(cv.c, _BLOCK), _rup(cv.o, _BLOCK))
    ic_block = ic if first else _BLOCK
    tr_pad = _rup(max(left, right + 1), 2)
    tr_iw = cv.w if first else _rup(_cdiv(cv.w, cv.sw) + tr_pad, 2) * cv.sw
    tr_ow = _rup(cv.wo, 2)
    full_spatial = (
        not first
        and ic >= 128
        and (cv.h, cv.w) == (cv.ho, cv.wo)
        and cv.kh != 1
        and cv.kw != 1
        and not cv.strided
        and cv.dh == cv.dw == 1
        and (left, top) == (cv.kw // 2, cv.kh // 2)
        and (ic_block * tr_iw + _BLOCK * tr_ow) * 2 * max(1, bottom, top) <= _FULL_SPAT_SET
    )
    work = cv.n if full_spatial else cv.n * cv.ho
    return _Weights(ic, oc, ic_block, tr_pad, tr_iw, tr_ow, work)


def _chain(x: float, times: tuple[int, ...], over: tuple[int, ...] = ()) -> float:
    """x multiplied by each of `times`, then divided by each of `over`, in float, left to right."""
    for t in times:
        x = _f32(x * t)
    for d in over:
        x = _f32(x / d)
    return x


def _memory_cost(cv: Conv, j: _Weights, nthr_mb: int, nthr_oc_b: int, nthr_ic_b: int) -> float:
    """`balance`'s `calc_mem_cost`: the per-thread memory traffic of one split (one group)."""
    src_size = cv.n * j.ic * cv.h * j.tr_iw * 2
    dst_size = cv.n * j.oc * cv.ho * j.tr_ow * 2
    wei_size = j.oc * j.ic * cv.kh * cv.kw * 4
    scale = _f32(_f32(0.5 * _f32(dst_size + src_size)) / _f32(wei_size))
    ratio = _f32(j.nb_oc / j.nb_ic)
    src_coef = max(_f32(1.0 / ratio), 1.0)
    if scale < 1.0:
        src_coef = _f32(src_coef * 4.0)
    mb_share, oc_share = _cdiv(j.work, nthr_mb), _cdiv(j.nb_oc, nthr_oc_b)
    ic_share = _cdiv(j.nb_ic, nthr_ic_b)
    src_dims = (mb_share, 1, ic_share, cv.n, j.ic_block, 1, cv.h, j.tr_iw)
    src = _chain(src_coef, src_dims, (j.work, 1, cv.sh, cv.sw))
    wei = _chain(max(scale, 1.0), (1, oc_share, ic_share, cv.kh, cv.kw, 1, j.ic_block, _BLOCK))
    dst = _chain(max(ratio, 1.0), (mb_share, 1, oc_share, cv.n, _BLOCK, 1, cv.ho, j.tr_ow), (j.work,))
    return _f32(_f32(src + dst) + wei)


def _balance(cv: Conv, j: _Weights) -> tuple[int, int, int, int]:
    """`balance` for one group: (threads, minibatch threads, output-channel-block threads, input-channel-
    block threads), the split of least memory cost (the last of equals), `cv.nthr` threads at most."""
    nthr = cv.nthr
    mb, oc_b, ic_b = _least_cost_split(
        nthr, j.work, j.nb_oc, j.nb_ic, lambda mb, oc_b, ic_b: _memory_cost(cv, j, mb, oc_b, ic_b)
    )
    if nthr // 2 < mb < nthr:
        mb = min(j.work, nthr)
    return mb * oc_b * ic_b, mb, oc_b, ic_b


def _least_cost_split(
    nthr: int, work: int, nb_oc: int, nb_ic: int, cost: Callable[[int, int, int], float]
) -> tuple[int, int, int]:
    """The search both `balance`s run: (minibatch, output-channel-block, input-channel-block) threads, at
    most `nthr` in all, of least `cost` (the last of equals; one thread each to start)."""
    best, split = cost(1, 1, 1), (1, 1, 1)
    for mb in range(1, min(nthr, work) + 1):
        par = nthr // mb
        for oc_b in range(1, min(par, nb_oc) + 1):
            ic_b = min(par // oc_b, nb_ic)
            c = cost(mb, oc_b, ic_b)
            if c <= best:
                best, split = c, (mb, oc_b, ic_b)
    return split


def bf16_weights_scratch(cv: Conv) -> int:
    """`init_scratchpad` (oneDNN v3.12) for an NCHW problem (no permw transposition; OpenMP, so a global
    transpose): the transposed source, one `tr_iw`-wide buffer per minibatch thread and input-channel
    block (none for a first layer) plus `tr_pad` guard elements, a barrier per thread group when output-
    channel blocks are split; the transposed diff-dst, `tr_ow` wide, per minibatch thread and output-
    channel block, a barrier per group when input-channel blocks are split; the float weight (and bias)
    reduction buffers, one per minibatch thread (the diff-weights are bf16), and their barrier."""
    j = _weights_conf(cv)
    nthr, nthr_mb, nthr_oc_b, nthr_ic_b = _balance(cv, j)
    tr_src = (0 if _first(cv) else nthr_mb * j.nb_ic * j.tr_iw * j.ic_block * cv.h) + j.tr_pad
    tr_diff_dst = nthr_mb * j.nb_oc * j.tr_ow * _BLOCK * cv.ho
    reduction = nthr_mb * (j.nb_oc * _BLOCK * j.ic * cv.kh * cv.kw + (j.nb_oc * _BLOCK if cv.bias else 0))
    return (
        _entry(tr_src * cv.elem)
        + (_barriers(nthr // nthr_oc_b) if nthr_oc_b > 1 else 0)
        + _entry(tr_diff_dst * cv.elem)
        + (_barriers(nthr // nthr_ic_b) if nthr_ic_b > 1 else 0)
        + _entry(reduction * 4)
        + _barriers(1)
    )


# --- 1x1, unit stride: jit_avx512_core_bf16_1x1_conv_kernel (bwd_data, bwd_weights)


def _best_divider(value: int, low: int, high: int, find_max: bool, step: int = 1) -> int:
    """oneDNN's `best_divider` (jit_uni_1x1_conv_utils.hpp): the divider in [low, high], from high down by
    `step`, that leaves the least padding (the first of equals if find_max, else the last)."""
    high = max(1, min(high, value))
    low = max(1, min(low, high))
    best, pick = float("inf"), high
    for d in range(high, low - 1, -step):
        loss = _f32((_rup(value, d) - value) / _rup(value, d))
        if loss < best or (not find_max and loss == best):
            best, pick = loss, d
    return pick


def _ur_1x1(cv: Conv, load: int, rows: int, pixels: int) -> int:
    """The 1x1 kernel's register blocking `ur` (pixels a step) for the forward and backward data passes
    (`init_conf`): a divisor of the rows (or of the pixels, below 14 rows) in [min, max] registers, else
    the one of least tail; `load` the channels computed (padded), `rows` the rows iterated."""
    expl = 8 * cv.n // cv.nthr >= 1
    hi, lo = (6, 5) if expl and 128 < load < 256 and 10 < rows < 28 else (9, 6) if expl else (30, 9)
    for ur in range(hi, lo - 1, -1):
        if (rows >= 14 and rows % ur == 0) or (rows < 14 and pixels % ur == 0):
            return ur
    ur, tail = min(hi, pixels), pixels % hi
    for i in range(hi, lo - 1, -1):
        if pixels % i > tail or pixels % i == 0:
            ur, tail = i, pixels % i
            if tail == 0:
                break
    return ur


def _load_groups(cv: Conv, load: int, reduce: int, ur: int) -> int:
    """`init_conf`'s load-group count (forward and backward data): with fewer images than threads, a
    float cost estimate over the groups; else the threads the images' pixel blocks leave; then at least
    4 for few pixels and weights of half the L2 or more (an L2 of 1 MiB a core assumed, as on every
    AVX-512-BF16 CPU without AMX), 2 for few pixels and a wide load."""
    nthr, pixels = cv.nthr, cv.ho * cv.wo
    nb_load, nb_bcast = load // _BLOCK, _cdiv(pixels, ur)
    if nthr <= 28 and cv.n < nthr and nb_load * nb_bcast > nthr:
        ratio = _f32(_f32(load * reduce) / _f32(cv.n * pixels * reduce))

        def job(lb: int, tg: int, mem_k: float) -> float:
            bb = cv.n * _cdiv(nb_bcast, tg)
            calc = _f32(_f32(_f32(bb * ur) * _f32(lb * _BLOCK)) * reduce)
            mem = _f32(_f32(bb * ur + lb * _BLOCK) * reduce)
            return _f32(_f32(_f32(0.01) * calc) + _f32(_f32(mem_k) * mem))

        best, groups = float("inf"), nthr if ratio > 1 else 1
        for i in range(nthr):
            lgc = nthr - i if ratio > 1 else i + 1
            min_tg, max_tg = nthr // lgc, _cdiv(nthr, lgc)
            mem_k = 1.0 if max_tg == 1 else 1.3
            if nthr % lgc < nb_load % lgc:
                cost = job(_cdiv(nb_load, lgc), min_tg, mem_k)
            else:
                cost = max(job(_cdiv(nb_load, lgc), max_tg, mem_k), job(nb_load // lgc, min_tg, mem_k))
            if cost < best:
                best, groups = cost, lgc
    else:
        groups = _cdiv(nthr, cv.n * nb_bcast)
        groups = _best_divider(nthr, groups, 2 * groups, False)
    if 8 * cv.n // nthr >= 1 and pixels <= 64 and load * reduce >= _L2_ELEMS:
        groups = max(groups, 4)
    elif pixels <= 49 and cv.n <= nthr and load > 512 and load // reduce >= 4:
        groups = max(groups, 2)
    return groups


def bf16_1x1_store(cv: Conv, load: int, reduce: int, rows: int) -> int:
    """`key_conv_store_wsp` (1x1 forward and backward data): a float block per thread of its load
    group's channels (`load` padded to 16, split in groups) times the output pixels rounded up to `ur`,
    the threads cut to the blocks of a tiny problem (`is_adjust_thread`)."""
    pixels = cv.ho * cv.wo
    ur = _ur_1x1(cv, load, rows, pixels)
    nthr, groups = cv.nthr, _load_groups(cv, load, reduce, ur)
    nb_bcast, nb_load = _cdiv(pixels, ur), load // _BLOCK
    if 2 * cv.n * pixels * reduce < 8192 and nb_bcast * nb_load < nthr:
        nthr = min(nthr, max(nb_bcast, nb_load))
    per_thread = _rup(_cdiv(load, _cdiv(nthr, _cdiv(nthr, groups))), _BLOCK)
    return _entry(4 * nthr * _rup(pixels, ur) * per_thread)


def bf16_1x1_data_scratch(cv: Conv) -> int:
    """The 1x1 backward data's store workspace, where the bf16 diff-src is accumulated in float."""
    return bf16_1x1_store(cv, _rup(cv.c, _BLOCK), _rup(cv.o, _BLOCK), cv.h)


def _weights_1x1_reduce_block(cv: Conv, permw: bool) -> int:
    is_ = cv.h * cv.w
    block = _best_divider(is_, 7, min(256, is_), True, 2) if permw else _best_divider(is_, 8, 16, True, 2)
    if is_ % block:
        block = _best_divider(cv.w, 4, cv.w, permw, 2)
    block = 1 if block > 256 else block
    return block if permw else _rup(block, 2)


def _balance_1x1(cv: Conv, reduce_block: int) -> tuple[int, int]:
    """`jit_avx512_core_bf16_1x1_conv_kernel::balance` (unit stride, one group): (threads used, minibatch
    threads), the split of least memory cost (the last of equals)."""
    nthr = cv.nthr
    nb_bcast, nb_load = _cdiv(cv.c, _BLOCK), _cdiv(cv.o, _BLOCK)
    red = cv.n * _cdiv(cv.h * cv.w, reduce_block)
    out_k = 4 * max(1, _rup(cv.o, _BLOCK) // _rup(cv.c, _BLOCK))

    def cost(mb: int, oc_b: int, ic_b: int) -> int:
        share = _cdiv(red, mb)
        bcast = share * _cdiv(nb_bcast, ic_b) * _BLOCK * reduce_block
        load = share * _cdiv(nb_load, oc_b) * _BLOCK * reduce_block
        return bcast + load + out_k * _cdiv(nb_load, oc_b) * _cdiv(nb_bcast, ic_b) * _BLOCK * _BLOCK

    mb, oc_b, ic_b = _least_cost_split(nthr, red, nb_load, nb_bcast, cost)
    if nthr // 2 < mb < nthr:
        mb = min(cv.n, nthr)
    return mb * oc_b * ic_b, mb


def _rtus(cv: Conv) -> bool:
    """`rtus_prepare` applies: strided, and the input exactly the output times the stride."""
    return cv.strided and (cv.h, cv.w) == (cv.ho * cv.sh, cv.wo * cv.sw)


def bf16_1x1_weights_ok(cv: Conv) -> bool:
    """The 1x1 weight gradient as modelled: at least 16 input channels; strided only where oneDNN
    reduces it to unit stride (`_rtus`)."""
    return cv.c >= _BLOCK and (not cv.strided or _rtus(cv))


def bf16_1x1_weights_scratch(cv: Conv) -> int:
    """`init_scratchpad` of the 1x1 weight gradient: a padded bias (output channels not a multiple of
    16), the float weight (and bias) buffers, one per minibatch thread (the diff-weights are bf16), their
    barrier when the minibatch is split and, without the permw transposition (rows of 14 or fewer), the
    transposed diff-dst and source per thread (pixels rounded to a pair, 16 channels, times the load /
    bcast blocking)."""
    strided, cv = cv.strided, replace(cv, h=cv.ho, w=cv.wo, sh=1, sw=1)  # rtus: the strided pixels copied
    c, o, is_ = _rup(cv.c, _BLOCK), _rup(cv.o, _BLOCK), cv.h * cv.w
    permw = cv.h > 14 and cv.w > 14
    nthr, nthr_mb = _balance_1x1(cv, _weights_1x1_reduce_block(cv, permw))
    bcast_max = _best_divider(c // _BLOCK, 5, c // _BLOCK, False)
    total = _entry(cv.bytes(o)) if cv.bias and o != cv.o else 0
    total += _entry(4 * nthr_mb * (o * c + (o if cv.bias else 0)))
    total += _barriers(1) if nthr_mb > 1 else 0
    if not permw:
        load_max = _best_divider(o // _BLOCK, 16, o // _BLOCK, False)
        total += _entry(cv.bytes(nthr * _rup(is_, 2) * _BLOCK * load_max))
        total += _entry(cv.bytes(nthr * _rup(is_, 2) * _BLOCK * bcast_max))
    if strided:  # `rtus_prepare_space_info`: per thread, the bcast blocking's channels of the pixels
        total += _entry(cv.bytes(nthr * bcast_max * is_ * _BLOCK))
    return total
