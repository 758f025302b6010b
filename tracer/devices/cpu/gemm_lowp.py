"""CPU bfloat16/float16 matrix multiplies: the oneDNN scratchpad each GEMM books, as the allocator sees it.

PyTorch runs a low-precision `mm`/`addmm` through `addmm_impl_cpu_` -> `cpublas::gemm` -> `mkldnn_gemm`
(aten/src/ATen/native/mkldnn/Matmul.cpp) and `bmm`/`baddbmm` through `mkldnn_matmul`, unless oneDNN is off
(`torch.backends.mkldnn`), the CPU lacks bf16/fp16 support, the product is tiny (M*N*K <= 4096), or it is a
gemv that ATen's own kernel does better (fp16 with F16C, bf16 without AVX512-BF16). There ideep builds a
oneDNN `matmul` primitive with a user scratchpad, allocated through the CPU allocator after the output and
freed when the kernel returns: one block, whose size follows from the `brgemm_matmul` configuration
(src/cpu/x64/matmul/brgemm_matmul_utils.cpp: `init_brgemm_matmul_conf`, `init_scratchpad`): per thread a
packed copy of B (always, for plain or transposed B), a copy of A (transposed A; always for fp16 on
AVX512-FP16, which computes in fp32), an fp32 accumulator buffer (when a block's K is split), the brgemm
batch descriptors and, on AMX, the tile workspace; every entry plus 128 bytes of alignment.

The blocking that sizes those buffers is the heuristic of oneDNN v3.12 (as bundled with PyTorch 2.13), ported
here line by line: the AMX "macro" heuristic (amx_blocking_heuristics.cpp; plain A) and "micro" heuristic
(transposed A or when the macro one finds nothing), the AVX-512 one (`compute_blocking_heuristic_avx512`, fp16
on AVX512-FP16, and bf16 on AVX512-BF16 or when AMX rejects a tiny problem), and the AMX kernel's tile
decomposition (brgemm_utils.cpp `brgemm_blocking_tmm`) for the tile workspace. bf16 on AVX-512 without a bf16
brgemm (no AVX512-BF16, or ONEDNN_MAX_CPU_ISA below it) runs `gemm_bf16_matmul_t`, whose scratchpad is an f32
copy of the output split over the threads. Float scores are evaluated in single precision as in C++ (ties pick
the first candidate, so the iteration order of the `std::unordered_set` of M blocks is reproduced too). Inputs
read at simulation time: `torch.get_num_threads()` (oneDNN's OpenMP pool), the ISAs oneDNN may use
(`cpu_isa.mayiuse`: the CPU's features capped by ONEDNN_MAX_CPU_ISA; PyTorch's bf16/fp16 checks compare
oneDNN's effective ISA) and its per-core L1d/L2 sizes, L2 ways and sets (/sys/devices/system/cpu/cpu0/cache).
Exact on a Sapphire-Rapids-class machine (AMX-BF16, AVX512-FP16) for thousands of random shapes, layouts
(plain, transposed, padded rows) and 1-16 threads (tests/test_rules_lowp.py keeps a sample).

Also modelled: the operand copies of `addmm_impl_cpu_` (an operand BLAS cannot read) and of `mkldnn_matmul`
(a batch operand neither contiguous nor transposed), made before the scratchpad and freed with it.
Not modelled (no scratchpad predicted): bf16/fp16 through AVX2-VNNI-2, fp16 on AMX-FP16 CPUs (other
oneDNN kernels and heuristics), bf16 on aarch64 (oneDNN's ACL kernels), other oneDNN versions (their
heuristics differ), `mv`/`dot`/`addbmm`/`_addmm_activation`. `modelled(dtype)` says which case the host is.
"""

from __future__ import annotations

import copy
import ctypes
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...core.registry import Workspace, rule
from . import isa as cpu_isa
from .cfloat import cdiv as _cdiv
from .cfloat import f32 as _f32
from .cfloat import rup as _rnd_up

aten = torch.ops.aten

AMX, BF16, FP16 = "avx512_core_amx", "avx512_core_bf16", "avx512_core_fp16"
AMX_FP16, VNNI2 = "avx512_core_amx_fp16", "avx2_vnni_2"  # their brgemm kernels are not ported
GEMM = "gemm_bf16"  # gemm_bf16_matmul_t: bf16 on AVX-512 without a bf16 brgemm
_PORTED, _UNPORTED = {AMX, BF16, FP16, GEMM}, {AMX_FP16, VNNI2}
_ALIGN = 128  # every scratchpad entry is booked with 128 bytes of alignment (memory_tracking.hpp)
_TILE = 1024  # one AMX tile (16 rows x 64 bytes)
_BATCH_ELEMENT = 40  # sizeof(brgemm_batch_element_t)


class _Unimplemented(Exception):
    """oneDNN's `status::unimplemented`: this implementation declines, the next one in the list is tried."""


def _is_pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


# --------------------------------------------------------------------------- the host


@dataclass(frozen=True)
class Host:
    """What PyTorch and oneDNN read from the CPU: the matmul implementations oneDNN tries, and the caches."""

    bf16_isas: tuple[str, ...]  # in the order oneDNN's implementation list tries them (AMX, BF16, GEMM...)
    f16_isas: tuple[str, ...]
    bf16_device: bool  # PyTorch's mkldnn_bf16_device_check: bf16 GEMMs go to oneDNN
    f16_device: bool  # mkldnn_fp16_device_check
    bf16_gemv_bypass: bool  # no AVX512-BF16: bf16 gemv runs on ATen's kernel
    f16_gemv_bypass: bool  # F16C: fp16 gemv runs on ATen's kernel
    l1: int = 32 * 1024  # per-core L1d bytes (oneDNN's guesses when the CPU does not say)
    l2: int = 512 * 1024  # per-core L2 bytes
    l2_ways: int = 16
    l2_sets: int = 2048
    line: int = 64


def _cache_sizes() -> dict[str, int]:
    """Per-core L1d and L2 sizes, L2 ways and sets, as Xbyak derives them from CPUID leaf 4."""
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    found: dict[int, tuple[int, int, int, int]] = {}  # level -> (size, ways, sets, sharing cpus)
    try:
        for index in sorted(root.glob("index*")):
            kind = (index / "type").read_text().strip()
            if kind not in ("Data", "Unified"):
                continue
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
            scale = {"K": 1024, "M": 1024 * 1024}.get(size[-1:], 1)
            nbytes = int(size[:-1] if scale > 1 else size) * scale
            ways = int((index / "ways_of_associativity").read_text())
            sets = int((index / "number_of_sets").read_text())
            sharing = _count_cpus((index / "shared_cpu_list").read_text())
            found[level] = (nbytes, ways, sets, sharing)
    except (OSError, ValueError):
        return {}
    if 1 not in found or 2 not in found:
        return {}
    smt = max(found[1][3], 1)
    return {
        "l1": found[1][0],
        "l2": found[2][0] // max(found[2][3] // smt, 1),
        "l2_ways": found[2][1],
        "l2_sets": found[2][2],
    }


def _count_cpus(cpu_list: str) -> int:
    n = 0
    for part in cpu_list.strip().split(","):
        if "-" in part:
            lo, hi = part.split("-")
            n += int(hi) - int(lo) + 1
        elif part:
            n += 1
    return n


@functools.cache
def host() -> Host | None:
    """The simulated CPU is this machine as this process's oneDNN sees it; None without oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return None
    if not cpu_isa.is_x86():
        # aarch64: bf16 GEMMs go to oneDNN's ACL/SVE kernels where the CPU has bf16 (not modelled), fp16
        # never; no x86 brgemm scratchpad is predicted
        arm_bf16 = "bf16" in cpu_isa.cpu_features()
        return Host((), (), arm_bf16, False, False, False)
    # brgemm_matmul_t<isa> in cpu_matmul_list order, as check_isa_with_datatype admits each data type,
    # then the GEMM-based bf16 matmul (AVX-512); what declines falls through to the next
    may = cpu_isa.mayiuse
    bf16 = [isa for isa in (AMX, BF16, VNNI2) if may(isa)] + ([GEMM] if may("avx512_core") else [])
    f16 = [isa for isa in (AMX_FP16, FP16, VNNI2) if may(isa)]
    features = cpu_isa.cpu_features()
    return Host(
        bf16_isas=tuple(bf16),
        f16_isas=tuple(f16),
        bf16_device=cpu_isa.onednn_isa_at_least(VNNI2),
        f16_device=cpu_isa.onednn_isa_at_least(FP16) or cpu_isa.onednn_isa() == VNNI2,
        bf16_gemv_bypass="avx512_bf16" not in features,
        f16_gemv_bypass="f16c" in features,
        **_cache_sizes(),  # type: ignore[arg-type]
    )


def modelled(dtype: torch.dtype) -> bool:
    """Whether this machine's oneDNN GEMMs of `dtype` are modelled: none run, or the first implementation
    oneDNN tries is a ported one and no unported one can take a problem it declines."""
    h = host()
    if h is None or dtype not in (torch.bfloat16, torch.float16):
        return False
    device, isas = (h.bf16_device, h.bf16_isas) if dtype == torch.bfloat16 else (h.f16_device, h.f16_isas)
    return not device or (bool(isas) and isas[0] in _PORTED and not set(isas) & _UNPORTED)


# --------------------------------------------------------------------------- the oneDNN problem


@dataclass(frozen=True)
class Matmul:
    """A oneDNN matmul: src (.., M, K), weights (.., K, N), dst (.., M, N) and their strides (elements)."""

    batch: int  # 0: 2-d
    M: int
    K: int
    N: int
    f16: bool
    src_strides: tuple[int, ...]
    wei_strides: tuple[int, ...]
    dst_strides: tuple[int, ...]
    with_sum: bool  # beta != 0: the sum post-op
    nthr: int


def _dense(dims: tuple[int, ...], tag: str) -> list[int]:
    strides = [0] * len(dims)
    s = 1
    for ch in reversed(tag):
        d = ord(ch) - ord("a")
        strides[d] = s
        s *= dims[d]
    return strides


def _matches(dims: tuple[int, ...], strides: tuple[int, ...], tag: str) -> bool:
    """`memory_desc_matches_tag`: dense strides of the tag, strides of unit dimensions ignored."""
    gold = _dense(dims, tag)
    return all(strides[d] == gold[d] for d in range(len(dims)) if dims[d] != 1)


def _pick_tag(dims: tuple[int, ...], strides: tuple[int, ...]) -> str:
    """Plain or transposed, as `set_or_check_tags`/`set_or_check_B_tag` pick it ("" if neither)."""
    plain, trans = ("ab", "ba") if len(dims) == 2 else ("abc", "acb")
    is_plain, is_trans = _matches(dims, strides, plain), _matches(dims, strides, trans)
    tag = plain if is_plain else trans if is_trans else ""
    if (not tag or (is_plain and is_trans)) and 0 not in strides and 1 in (strides[-1], strides[-2]):
        tag = plain if (strides[-1] == 1 and dims[-2] > 1) else trans  # check_gemm_input_format, transA()
    return tag


def _canonical(dims: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    expected = 1
    for d, s in reversed([(d, s) for d, s in zip(dims, strides, strict=True) if d != 1]):
        if s != expected:
            return False
        expected *= d
    return True


class _Conf:
    """The fields of `brgemm_matmul_conf_t` the scratchpad depends on."""

    def __init__(self, p: Matmul, isa: str) -> None:
        self.isa = isa
        self.nthr = p.nthr
        self.is_amx = isa == AMX
        self.orig_dt = "f16" if p.f16 else "bf16"
        self.src_dt = self.wei_dt = self.orig_dt
        self.a_dt_sz = self.b_dt_sz = self.tr_a_dt_sz = self.tr_b_dt_sz = 2
        if p.f16 and isa == FP16:  # converted to f32 in the copy routines, computed in f32
            self.src_dt = self.wei_dt = "f32"
            self.tr_a_dt_sz = self.tr_b_dt_sz = 4
        self.c_dt_sz, self.acc_dt_sz = 2, 4  # bf16/f16 dst, f32 accumulation
        self.with_sum = p.with_sum
        self.ndims = 3 if p.batch else 2
        self.M, self.N, self.K, self.batch = p.M, p.N, p.K, max(p.batch, 1)
        self.src_strides = p.src_strides
        self.transposed_A_tag = False
        self.src_plain = True
        self.treat_A_as_plain = False
        self.transposed_A = False
        self.transposed_B = False
        self.required_k_granularity = 1
        self.wei_k_blk = 0
        self.wei_n_blk = 0
        self.use_buffer_a = False
        self.use_buffer_b = True
        self.use_buffer_c = False
        self.M_blk = self.N_blk = self.K_blk = 0
        self.M_chunk_size = self.N_chunk_size = self.K_chunk_size = 1
        self.brgemm_batch_size = 0
        self.nthr_k, self.nthr_m, self.nthr_n, self.nthr_b = 1, 0, 0, 0
        self.LDA = self.LDB = self.LDC = self.LDD = 0
        self.extendable_k = False
        self.use_fused_copy_a = False
        self.is_a_nt = self.is_b_nt = self.set_nt = False
        self.need_prefetch_a = self.need_prefetch_b = False
        self.K_chunk_elems = 0  # still 0 when the AVX-512 heuristic reads it
        self.bs_tail = 0  # the last K chunk's brgemm batch
        self.buffer_a = self.buffer_b = self.buffer_c = 0  # per-thread bytes
        self.tiles = 0  # per-thread AMX tile workspace

    def A_stride(self, i: int) -> int:
        """`A_strides[i]`: bytes along src dimension ndims-1-i."""
        return self.a_dt_sz * self.src_strides[self.ndims - 1 - i]

    def lda_big_pow2(self) -> bool:
        return not self.transposed_A and _is_pow2(self.K) and 8192 // self.a_dt_sz <= self.K


def _vnni(dt: str) -> int:
    return 1 if dt == "f32" else 2


# --------------------------------------------------------------------------- AMX blocking


class _AmxBlocking:
    """`matmul_amx_blocking_params_t`: the blocking under evaluation, over a copy of the configuration."""

    def __init__(self, c: _Conf, h: Host) -> None:
        self.c = c
        self.h = h
        self.nthr_m_ = max(c.nthr_m, 1)
        self.nthr_n_ = max(c.nthr_n, 1)
        self.nthr_k_ = max(c.nthr_k, 1)
        self.nthr_b_ = max(c.nthr_b, 1)
        self.nthr_mnb_ = c.nthr // self.nthr_k_
        self.nthr_ = self.nthr_mnb_ * self.nthr_k_
        self.n_blk_, self.n_chunk_size_ = c.N_blk, c.N_chunk_size
        self.n_chunk_elems_ = self.n_blk_ * self.n_chunk_size_
        self.m_blk_, self.m_chunk_size_ = c.M_blk, c.M_chunk_size
        self.m_chunk_elems_ = self.m_blk_ * self.m_chunk_size_
        self.k_blk_, self.k_chunk_size_ = c.K_blk, c.K_chunk_size
        self.k_chunk_elems_ = self.k_blk_ * self.k_chunk_size_ * c.brgemm_batch_size
        self.is_a_nt_, self.is_b_nt_, self.set_nt_ = c.is_a_nt, c.is_b_nt, c.set_nt
        self.need_prefetch_a_, self.need_prefetch_b_ = c.need_prefetch_a, c.need_prefetch_b
        self.use_fused_copy_a_ = c.use_fused_copy_a
        self.brgemm_batch_size_ = c.brgemm_batch_size
        self.current_lda_ = c.LDA
        self.need_buf_c_ = c.use_buffer_c
        self.need_buf_a_ = c.use_buffer_a
        self.extendable_k_ = c.extendable_k
        self.blocking_chunk_mem_size_ = 0
        self.efficiency_score_ = 0.0

    def L1_threshold(self) -> int:
        return 5 * self.h.l1 // 6

    def L2_threshold(self) -> int:
        return 3 * self.h.l2 // 4

    def update_configuration(self, c: _Conf) -> None:
        c.nthr_k, c.nthr_m, c.nthr_n, c.nthr_b = self.nthr_k_, self.nthr_m_, self.nthr_n_, self.nthr_b_
        c.nthr = self.nthr_
        c.M_blk, c.M_chunk_size = self.m_blk_, self.m_chunk_size_
        c.N_blk, c.N_chunk_size = self.n_blk_, self.n_chunk_size_
        c.K_blk, c.K_chunk_size = self.k_blk_, self.k_chunk_size_
        c.brgemm_batch_size = self.brgemm_batch_size_
        c.use_buffer_c, c.use_buffer_a = self.need_buf_c_, self.need_buf_a_
        c.extendable_k = self.extendable_k_
        c.LDA = self.current_lda_
        c.use_fused_copy_a = self.use_fused_copy_a_

    def get_actual_lda(self) -> int:
        c = self.c
        if not self.need_buf_a_:
            return c.K if c.treat_A_as_plain else c.A_stride(1 - int(c.transposed_A)) // c.a_dt_sz
        elems = 64 // c.a_dt_sz
        lda = _rnd_up(self.k_blk_, elems)
        return lda + elems if lda >= 512 and _is_pow2(lda) else lda

    def is_buffer_c_required(self) -> bool:
        c = self.c
        if self.nthr_k_ > 1 and self.k_chunk_elems_ < c.K:
            return True
        return self.k_chunk_elems_ < c.K or c.K % self.k_blk_ > 0  # acc (f32) != dst (bf16/f16)


def _tmul_size(n: int, full: int) -> int:
    return _cdiv(n, _cdiv(n, full))


# bw_map_t: DRAM bandwidth by the number of cores sharing, and the L1/LLC bandwidths (floats)
_MC_BW = (
    (1, _f32(2.28)),
    (2, _f32(0.9)),
    (4, _f32(2.39)),
    (8, _f32(2.98)),
    (16, _f32(3.31)),
    (32, _f32(4.06)),
)
_L1_LOAD_HIT = _f32(106.41)
_L1_STORE_HIT = _L1_LOAD_HIT
_L1_LOAD_MISS = _f32(_f32(106.41) / _f32(2.28))
_L1_STORE_MISS = _f32(_f32(106.41) / _f32(2.85))
_LLC_BW = _f32(6.0)


def _bw(x: float) -> float:
    for i, (k, v) in enumerate(_MC_BW):
        if k >= x:
            if i == 0:
                return v
            x0, y0 = _MC_BW[i - 1]
            return _f32(y0 + _f32(_f32(_f32(v - y0) * _f32(x - x0)) / _f32(k - x0)))
    return _MC_BW[-1][1]


class _Macro(_AmxBlocking):
    """`matmul_amx_blocking_params_macro_t`: plain A, bf16 on AMX."""

    def __init__(self, c: _Conf, h: Host) -> None:
        super().__init__(c, h)
        self.gemm_dt_sz = c.tr_a_dt_sz
        self.min_k_elem = 256 // self.gemm_dt_sz
        self.min_mn_elem = 64 // c.c_dt_sz
        self.k_threshold_write_bound = 256 // self.gemm_dt_sz
        self.min_n_write_bound = 256 // self.gemm_dt_sz
        self.n_decomposition = self.m_decomposition = 32
        self.m_per_thread = self.k_per_thread = self.n_per_thread = self.b_per_thread = 0
        self.is_horizontal = False
        self.m_tmul = self.n_tmul = self.k_tmul = 0

    @staticmethod
    def is_supported(c: _Conf) -> bool:
        return c.src_dt == c.orig_dt and c.wei_dt == c.orig_dt and c.is_amx and c.src_plain

    def divs_are_acceptable(self) -> bool:
        c = self.c
        bad_m = _rnd_up(self.m_per_thread, self.m_tmul) < self.min_mn_elem and self.nthr_m_ > 1
        bad_k = self.k_per_thread < self.min_k_elem and self.nthr_k_ > 1
        min_n = self.min_mn_elem
        if self.nthr_k_ == 1 and self.k_per_thread < self.k_threshold_write_bound:
            min_n = self.min_n_write_bound
        bad_n = _rnd_up(self.n_per_thread, self.n_tmul) < min_n and self.nthr_n_ > 1
        return not (bad_m or bad_k or bad_n or self.nthr_b_ > c.batch)

    def skip_extendable_k(self) -> bool:
        def fits(k: int) -> bool:
            ops = _cdiv(k, 64 // self.gemm_dt_sz)
            tile = k // ops
            return k % ops == 0 and tile <= 64 // self.gemm_dt_sz and tile % _vnni(self.c.wei_dt) == 0

        tail = self.c.K % self.k_blk_
        return fits(self.k_blk_) and (fits(tail) if tail else True)

    def set_core_divs(self, nthr_b: int, nthr_m: int, nthr_k: int, nthr_n: int) -> None:
        c = self.c
        self.nthr_b_, self.nthr_m_, self.nthr_k_, self.nthr_n_ = nthr_b, nthr_m, nthr_k, nthr_n
        self.m_per_thread = _cdiv(c.M, nthr_m)
        self.k_per_thread = _cdiv(c.K, nthr_k)
        self.n_per_thread = _cdiv(c.N, nthr_n)
        self.b_per_thread = _cdiv(c.batch, nthr_b)
        self.nthr_mnb_ = self.nthr_ // self.nthr_k_

    def set_tmul_sizes(self) -> None:
        self.m_tmul = _tmul_size(self.m_per_thread, 16)
        self.n_tmul = 16
        self.k_tmul = min(self.c.wei_k_blk, self.c.K)

    def set_decomposition(self) -> None:
        self.m_decomposition = min(self.c.M, 2 * self.m_tmul)
        self.n_decomposition = min(self.c.N, 2 * self.n_tmul)

    def _set_common(self) -> None:
        c = self.c
        self.k_blk_ = c.K
        self.k_chunk_size_ = 1
        self.brgemm_batch_size_ = 1
        self.need_buf_c_ = self.need_buf_a_ = False
        self.extendable_k_ = c.K % c.wei_k_blk != 0 and not self.skip_extendable_k()
        self.is_a_nt_ = self.set_nt_ = True
        self.need_prefetch_a_ = self.need_prefetch_b_ = self.use_fused_copy_a_ = False
        self.efficiency_score_ = 1.0
        self.current_lda_ = self.get_actual_lda()

    def maybe_small_dims(self) -> bool:
        """`maybe_small_dims_heuristics`: one thread per consecutive chunk of the largest matrix."""
        c = self.c
        full = 0.75 * self.nthr_
        if c.M <= 32 and ((not c.use_buffer_b) or c.transposed_B) and c.batch == 1:
            self.n_decomposition = min(c.N, c.wei_n_blk)
            self.m_decomposition = c.M
            n_per_core = _rnd_up(_cdiv(c.N, c.nthr), self.n_decomposition)
            self.set_core_divs(1, 1, 1, _cdiv(c.N, n_per_core))
            if self.nthr_n_ < full:
                return False
            self.m_blk_, self.m_chunk_size_ = c.M, 1
            self.n_blk_ = self.n_decomposition
            self.n_chunk_size_ = n_per_core // self.n_decomposition
            if c.use_buffer_b and self.L2_threshold() < c.M * c.K:
                return False
            self._set_common()
            return True
        if c.wei_k_blk >= c.K and c.batch == 1:
            m_per_core = _cdiv(c.M, c.nthr)
            self.set_core_divs(1, _cdiv(c.M, m_per_core), 1, 1)
            self.set_tmul_sizes()
            self.set_decomposition()
            if self.nthr_m_ < full:
                return False
            self.m_blk_ = self.m_decomposition
            self.m_chunk_size_ = _cdiv(m_per_core, self.m_decomposition)
            self.n_blk_, self.n_chunk_size_ = c.N, 1
            if c.use_buffer_b:
                size = c.N * c.K + c.N * _rnd_up(c.K, c.wei_k_blk) + c.N * self.m_decomposition
                self.n_chunk_size_ = _cdiv(size, self.L2_threshold())
                self.n_blk_ = _rnd_up(_cdiv(c.N, self.n_chunk_size_), c.wei_n_blk)
            self._set_common()
            return True
        if c.N <= 32 and c.batch == 1:
            m_per_core = _cdiv(c.M, c.nthr)
            self.m_per_thread = m_per_core
            self.m_decomposition = _tmul_size(m_per_core, 32)
            self.n_tmul, self.n_decomposition = 16, 32
            self.k_tmul = min(c.wei_k_blk, c.K)
            self.set_core_divs(1, _cdiv(c.M, _rnd_up(m_per_core, self.m_decomposition)), 1, 1)
            if self.nthr_m_ < full:
                return False
            self.m_blk_ = self.m_decomposition
            self.m_chunk_size_ = _cdiv(m_per_core, self.m_decomposition)
            self.n_blk_, self.n_chunk_size_ = c.N, 1
            self._set_common()
            return True
        return False

    def calc_k_blk(self, l1_dim: int) -> int:
        c = self.c
        c_tiles = self.m_decomposition * self.n_decomposition * c.acc_dt_sz
        d_tiles = self.m_decomposition * _rnd_up(self.n_decomposition * c.c_dt_sz, 64)
        available = (self.L1_threshold() - (c_tiles * 2 + d_tiles)) % (1 << 64)  # size_t
        largest_k_tiles = available // (l1_dim * self.gemm_dt_sz) // self.k_tmul
        k_per_thread_tiles = _cdiv(_cdiv(c.K, self.k_tmul), self.nthr_k_)
        num_k_blocks = _cdiv(k_per_thread_tiles, largest_k_tiles)
        return min(_cdiv(k_per_thread_tiles, num_k_blocks) * self.k_tmul, c.K)

    @staticmethod
    def blk_candidates(per_thread: int, decomposition: int) -> list[int]:
        inner = _cdiv(per_thread, decomposition)
        return sorted({_cdiv(inner, groups) for groups in range(1, inner + 1)})

    def l2_matrix_usage(
        self, kcs: int, mn_blk: int, k_blk: int, horizontal: bool, force: bool = False
    ) -> int:
        c = self.c
        k = min(k_blk * kcs, self.k_per_thread)
        decomposition = self.m_decomposition if horizontal else self.n_decomposition
        l1_matrix = 2 * decomposition * k * self.gemm_dt_sz
        l2_matrix = mn_blk * k * self.gemm_dt_sz
        if force:
            l2_matrix += mn_blk * k_blk * kcs * (c.b_dt_sz if horizontal else c.a_dt_sz)
        if horizontal:
            c_post = 2 * self.m_decomposition * _rnd_up(mn_blk * c.c_dt_sz, 64)
        else:
            c_post = 2 * _rnd_up(self.n_decomposition * c.c_dt_sz, 64) * mn_blk
        if k_blk == c.K:
            c_tmp = 2 * self.m_decomposition * self.n_decomposition * c.acc_dt_sz
        else:
            c_tmp = 2 * decomposition * mn_blk * c.acc_dt_sz
        return l1_matrix + l2_matrix + c_tmp + c_post

    def l2_matrix_and_c_usage(self, kcs: int, mn_blk: int, k_blk: int, horizontal: bool) -> int:
        per_thread = self.m_per_thread if horizontal else self.n_per_thread
        k = min(k_blk * kcs, self.k_per_thread)
        return (2 * per_thread + 2 * mn_blk) * k * self.gemm_dt_sz + per_thread * mn_blk * self.c.acc_dt_sz

    def ratio(self, m_blk: int, kcs: int, k_blk: int, n_blk: int, horizontal: bool) -> float:
        c = self.c
        k = min(k_blk * kcs, self.k_per_thread)
        usage = self.l2_matrix_and_c_usage(kcs, n_blk if horizontal else m_blk, k_blk, horizontal)
        c_bw = 0 if (usage < self.L2_threshold() or k == c.K) and self.nthr_k_ == 1 else m_blk * n_blk * 4
        bw = ctypes.c_int((m_blk + n_blk) * k * self.gemm_dt_sz + c_bw).value
        return _f32(_f32(ctypes.c_int(m_blk * k * n_blk).value) / _f32(bw))

    def evaluate(self, kcs: int, mn_blk: int, k_blk: int, horizontal: bool, force: bool = False) -> float:
        if self.l2_matrix_usage(kcs, mn_blk, k_blk, horizontal, force) > self.L2_threshold():
            return 0.0
        if horizontal:
            return self.ratio(self.m_decomposition, kcs, k_blk, mn_blk, True)
        return self.ratio(mn_blk, kcs, k_blk, self.n_decomposition, False)

    def set_blocking_parameters(self, force_horizontal: bool = False, force_b_to_l2: bool = False) -> bool:
        c = self.c
        m_cands = self.blk_candidates(self.m_per_thread, self.m_decomposition)
        n_cands = self.blk_candidates(self.n_per_thread, self.n_decomposition)
        best_k_h = best_n_h = best_m_v = best_k_v = 0
        score_h = score_v = 0.0
        h_impossible, v_impossible = False, force_horizontal

        def horizontal(k_blk_h: int, min_kcs: int = 0) -> None:
            nonlocal best_k_h, best_n_h, score_h, h_impossible
            if _rnd_up(self.m_per_thread, self.m_decomposition) * (self.nthr_m_ - 1) >= c.M:
                h_impossible = True
                return
            if _rnd_up(self.k_per_thread, k_blk_h) * (self.nthr_k_ - 1) >= c.K:
                h_impossible = True
                return
            k_cands = self.blk_candidates(self.k_per_thread, k_blk_h)
            best_n_h = 0
            for n in reversed(n_cands):
                for k in reversed(k_cands):
                    s = self.evaluate(k, n * self.n_decomposition, k_blk_h, True, force_b_to_l2)
                    if s > score_h and k >= min_kcs:
                        score_h, best_k_h, best_n_h = s, k, n
            if best_n_h == 0:
                h_impossible = True
                return
            if _rnd_up(self.n_per_thread, best_n_h * self.n_decomposition) * (self.nthr_n_ - 1) >= c.N:
                h_impossible = True
            if _rnd_up(self.k_per_thread, best_k_h * k_blk_h) * (self.nthr_k_ - 1) >= c.K:
                h_impossible = True

        def vertical(k_blk_v: int, min_kcs: int = 0) -> None:
            nonlocal best_m_v, best_k_v, score_v, v_impossible
            if _rnd_up(self.n_per_thread, self.n_decomposition) * (self.nthr_n_ - 1) >= c.N:
                v_impossible = True
                return
            if _rnd_up(self.k_per_thread, k_blk_v) * (self.nthr_k_ - 1) >= c.K:
                v_impossible = True
                return
            k_cands = self.blk_candidates(self.k_per_thread, k_blk_v)
            for m in reversed(m_cands):
                for k in reversed(k_cands):
                    s = self.evaluate(k, m * self.m_decomposition, k_blk_v, False)
                    if s > score_v and k >= min_kcs:
                        score_v, best_k_v, best_m_v = s, k, m
            if best_m_v == 0:
                v_impossible = True
                return
            if _rnd_up(self.m_per_thread, best_m_v * self.m_decomposition) * (self.nthr_m_ - 1) >= c.M:
                v_impossible = True
            if _rnd_up(self.k_per_thread, best_k_v * k_blk_v) * (self.nthr_k_ - 1) >= c.K:
                v_impossible = True
            l2_util = 0
            if not v_impossible:
                m_blk = best_m_v * self.m_decomposition
                l2_util = self.l2_matrix_and_c_usage(best_k_v, m_blk, k_blk_v, False)
                if l2_util > self.L2_threshold():
                    l2_util = self.l2_matrix_usage(best_k_v, m_blk, k_blk_v, False)
            k_blocks = _cdiv(c.K, k_blk_v * best_k_v)
            if k_blocks != 1 and (k_blocks != self.nthr_k_ or l2_util * self.nthr_k_ >= self.L2_threshold()):
                v_impossible = True
            l2_bytes_per_way = self.h.l2_sets * self.h.line
            if l2_bytes_per_way == 0:
                v_impossible = True
                return
            stride = c.N * c.c_dt_sz % 4096 or 4096
            if l2_bytes_per_way % stride == 0:
                ways = _cdiv(stride * self.m_per_thread, l2_bytes_per_way)
                if ways >= 3 * self.h.l2_ways // 4:
                    v_impossible = True

        k_blk_h = self.calc_k_blk(self.m_decomposition)
        horizontal(k_blk_h)
        k_blk_v = self.calc_k_blk(self.n_decomposition)
        vertical(k_blk_v)
        if v_impossible and h_impossible:
            return False
        if h_impossible:
            self.is_horizontal = False
        elif v_impossible or self.m_per_thread < self.m_tmul * 2:
            self.is_horizontal = True
        elif self.n_per_thread < self.n_tmul * 2:
            self.is_horizontal = False
        else:
            self.is_horizontal = self.m_per_thread >= self.n_per_thread
        # no post-ops but the sum: never post-ops bound
        if self.is_horizontal:
            a_l1 = k_blk_h * self.m_decomposition * self.gemm_dt_sz
            c_l1 = self.n_decomposition * self.m_decomposition * c.acc_dt_sz
            d_post = self.m_decomposition * _rnd_up(self.n_decomposition * c.c_dt_sz, 64)
            self.is_a_nt_, self.is_b_nt_ = False, True
            if k_blk_h < c.K and _cdiv(c.K, k_blk_h) * a_l1 + 2 * c_l1 + d_post > self.L1_threshold():
                score_h = 0.0  # give up on L1 blocking: fit the L2 with K blocks of wei_k_blk
                horizontal(c.wei_k_blk, k_blk_h // c.wei_k_blk)
                k_blk_h = min(c.wei_k_blk * best_k_h, c.K)
                best_k_h = 1
                self.is_a_nt_ = True
            self.k_blk_, self.k_chunk_size_ = k_blk_h, best_k_h
            self.n_blk_, self.n_chunk_size_ = min(best_n_h * self.n_decomposition, c.N), 1
            self.m_blk_ = self.m_decomposition
            self.m_chunk_size_ = _cdiv(self.m_per_thread, self.m_blk_)
            self.need_prefetch_a_ = self.m_per_thread // self.m_blk_ >= 2
            self.need_prefetch_b_ = False
            self.use_fused_copy_a_ = (
                c.K % c.wei_k_blk != 0
                and self.n_blk_ >= self.n_decomposition * 3
                and self.k_blk_ >= (64 // self.gemm_dt_sz) * 4
            )
            self.extendable_k_ = (
                c.K % c.wei_k_blk != 0 and not self.skip_extendable_k() and not self.use_fused_copy_a_
            )
        else:
            self.k_blk_, self.k_chunk_size_ = k_blk_v, best_k_v
            self.n_blk_ = self.n_decomposition
            self.n_chunk_size_ = _cdiv(self.n_per_thread, self.n_blk_)
            self.m_blk_, self.m_chunk_size_ = min(best_m_v * self.m_decomposition, c.M), 1
            self.is_a_nt_, self.is_b_nt_ = True, False
            self.need_prefetch_a_ = False
            self.need_prefetch_b_ = self.n_per_thread // self.n_blk_ >= 2 and not c.use_buffer_b
            self.use_fused_copy_a_ = False
            self.extendable_k_ = c.K % c.wei_k_blk != 0 and not self.skip_extendable_k()
        self.brgemm_batch_size_ = 1
        self.n_chunk_elems_ = min(self.n_per_thread, self.n_blk_ * self.n_chunk_size_)
        self.m_chunk_elems_ = min(self.m_per_thread, self.m_blk_ * self.m_chunk_size_)
        self.k_chunk_elems_ = min(self.k_per_thread, self.k_blk_ * self.k_chunk_size_)
        self.set_nt_ = True
        self.current_lda_ = self.get_actual_lda()
        self.need_buf_c_ = self.nthr_k_ != 1 or self.k_blk_ != c.K
        self.efficiency_score_ = self.scores()
        return True

    def scores(self) -> float:
        """`calculate_blocking_scores`: peak cycles over modelled cycles, in single precision."""
        c = self.c
        g = self.gemm_dt_sz
        strip1_transform = self.is_horizontal and c.use_buffer_b
        strips_transform = not self.is_horizontal and c.use_buffer_b
        a_size = self.m_per_thread * self.k_per_thread * g
        b_size = self.n_per_thread * self.k_per_thread * g
        d_size = self.m_per_thread * self.n_per_thread * c.c_dt_sz
        cycles_per_tmul = self.m_tmul * 64 * 16 // 1024
        dst_sz = c.c_dt_sz if self.nthr_k_ == 1 else c.acc_dt_sz
        if self.is_horizontal:
            strip_dst = self.m_decomposition * self.n_per_thread * dst_sz
            work = self.m_decomposition * self.k_per_thread * self.n_per_thread
            num_strip = _f32(_cdiv(self.m_per_thread, self.m_decomposition))
            nt_l1_miss = _f32(b_size)
            l1_reuse = _f32(_cdiv(self.n_blk_, self.n_decomposition))
            s1_shared = _f32(b_size)
            s1_private = _f32(self.m_decomposition * self.k_per_thread * g + strip_dst)
            s1_coef = _f32(self.nthr_m_)
            mid_shared = _f32(self.m_decomposition * self.k_per_thread * g)
            mid_coef = _f32(max(1, self.nthr_n_))
        else:
            strip_dst = self.n_decomposition * self.m_per_thread * dst_sz
            work = self.n_decomposition * self.k_per_thread * self.m_per_thread
            num_strip = _f32(_cdiv(self.n_per_thread, self.n_decomposition))
            nt_l1_miss = _f32(a_size)
            l1_reuse = _f32(_cdiv(self.m_blk_, self.m_decomposition))
            s1_shared = _f32(a_size)
            s1_private = _f32(self.n_decomposition * self.k_per_thread * g + strip_dst)
            s1_coef = _f32(self.nthr_n_)
            mid_shared = _f32(self.n_decomposition * self.k_per_thread * g)
            mid_coef = _f32(max(1, self.nthr_m_))
        tmuls = _f32(work // (self.m_tmul * self.k_tmul * self.n_tmul))
        mid_private = _f32(strip_dst)
        t_miss = _f32(mid_shared * 2)
        t_hit = _f32(mid_shared * _f32(l1_reuse - 1))
        c_elems = _f32(self.m_blk_ * self.n_blk_)
        n_groups = _cdiv(self.n_blk_, self.n_decomposition)
        write_miss = _f32(self.m_blk_ * n_groups * _rnd_up(self.n_decomposition * c.c_dt_sz, 64))
        write_total = _f32(self.m_blk_ * n_groups * _cdiv(self.n_decomposition, 16) * 64)
        write_hit = _f32(write_total - write_miss)
        read_c_tmp = _f32(c_elems * c.acc_dt_sz)
        c_tmp_bw = _L1_LOAD_HIT if self.k_blk_ == c.K else _L1_STORE_MISS
        c_tmp_cycles = _f32(_f32(_f32(c.acc_dt_sz * c_elems) * self.k_chunk_size_) / c_tmp_bw)
        c_l1 = _f32(write_miss / _L1_STORE_MISS)
        c_l1 = _f32(c_l1 + _f32(write_hit / _L1_STORE_HIT))
        c_l1 = _f32(c_l1 + _f32(read_c_tmp / _L1_STORE_HIT))
        c_l1 = _f32(c_l1 + c_tmp_cycles)
        l1_cycles = _f32(t_miss / _L1_LOAD_MISS)
        l1_cycles = _f32(l1_cycles + _f32(t_hit / _L1_LOAD_HIT))
        l1_cycles = _f32(l1_cycles + _f32(nt_l1_miss / _L1_LOAD_MISS))
        l1_cycles = _f32(l1_cycles + c_l1)
        transform_h = _f32(s1_shared / _bw(s1_coef)) if strip1_transform else 0.0
        transform_v = _f32(mid_shared / _bw(mid_coef)) if strips_transform else 0.0
        if strips_transform:
            mid_dram = _f32(mid_private / _bw(1))
            mid_llc = _f32(mid_private / _LLC_BW)
        else:
            mid_dram = _f32(_f32(mid_shared / _bw(mid_coef)) + _f32(mid_private / _bw(1)))
            mid_llc = _f32(_f32(mid_private + mid_shared) / _LLC_BW)
        strip_tmul = _f32(tmuls * cycles_per_tmul)
        mid_cycles = _f32(transform_v + max(mid_dram, mid_llc, l1_cycles, strip_tmul, 0.0))
        if not strip1_transform:
            s1_cycles = _f32(_f32(s1_shared / _bw(s1_coef)) + _f32(s1_private / _bw(1)))
        elif (
            self.l2_matrix_usage(self.k_chunk_size_, self.n_blk_, self.k_blk_, True, True)
            < self.L2_threshold()
        ):
            s1_cycles = mid_cycles
        else:
            s1_cycles = _f32(s1_shared / _LLC_BW)
        gemm_cycles = _f32(_f32(transform_h + s1_cycles) + _f32(_f32(num_strip - 1) * mid_cycles))
        reduction = 0.0
        if self.nthr_k_ != 1:
            if not (
                self.m_per_thread * self.n_per_thread * c.acc_dt_sz * 2 < self.L2_threshold() and c.batch == 1
            ):
                return 0.0
            mn = self.nthr_m_ * self.nthr_n_
            read_bytes = _f32(_f32(_f32(c.M * _rnd_up(c.N, 16) * c.acc_dt_sz) * (self.nthr_k_ - 1)) / mn)
            fits = a_size + b_size + d_size < self.L2_threshold()
            read = _f32(read_bytes / (_bw(2) if fits else _LLC_BW))
            write = _f32(_f32(_f32(c.M * c.N * c.c_dt_sz) / mn) / _bw(1))
            reduction = _f32(_f32(read + write) + 25000)
        total_cycles = _f32(_f32(gemm_cycles + reduction) * self.b_per_thread)
        peak_cycles = _f32(_f32(c.M * c.K * c.N * c.batch) / _f32((1024 // g) * c.nthr))
        return _f32(peak_cycles / total_cycles)

    def better_than(self, other: _Macro) -> bool:
        """`operator>`."""
        c = self.c
        if other.efficiency_score_ != self.efficiency_score_:
            return self.efficiency_score_ > other.efficiency_score_
        if not self.is_horizontal and other.is_horizontal:
            return self.m_per_thread * c.K + self.m_per_thread * c.N < self.L2_threshold() and other.is_a_nt_
        if self.is_horizontal and not other.is_horizontal:
            return not (
                other.m_per_thread * c.K + other.m_per_thread * c.N < self.L2_threshold() and self.is_a_nt_
            )
        return self.m_chunk_size_ * self.n_chunk_size_ > other.m_chunk_size_ * other.n_chunk_size_

    @classmethod
    def find_best_blocking(cls, c: _Conf, h: Host) -> _Macro:
        best, cur = cls(c, h), cls(c, h)
        if best.maybe_small_dims():
            return best
        for nthr in range(c.nthr, 0, -1):
            cur.nthr_ = nthr
            for b_div in (d for d in range(1, nthr + 1) if nthr % d == 0):
                rest_b = nthr // b_div
                for m_div in (d for d in range(1, rest_b + 1) if rest_b % d == 0):
                    rest_m = rest_b // m_div
                    for k_div in (d for d in range(1, rest_m + 1) if rest_m % d == 0):
                        cur.set_core_divs(b_div, m_div, k_div, rest_m // k_div)
                        cur.set_tmul_sizes()
                        cur.set_decomposition()
                        if (
                            cur.divs_are_acceptable()
                            and cur.set_blocking_parameters()
                            and cur.better_than(best)
                        ):
                            best = copy.copy(cur)
        if c.use_buffer_b and not c.transposed_B and not best.is_horizontal:
            cur.nthr_ = best.nthr_b_ * best.nthr_m_ * best.nthr_n_ * best.nthr_k_
            cur.set_core_divs(best.nthr_b_, best.nthr_m_, best.nthr_k_, best.nthr_n_)
            if cur.set_blocking_parameters(True) and cur.better_than(best):
                best = copy.copy(cur)
            if cur.set_blocking_parameters(True, True) and cur.better_than(best):
                best = copy.copy(cur)
        return best


class _UnorderedIntSet:
    """libstdc++'s `std::unordered_set<int>`: its rehash policy and bucket lists, iterated in list order.

    A new value goes first in its bucket's group of nodes, or first in the list if its bucket is empty;
    a rehash relinks the nodes the same way in their old order.
    """

    _FAST = (2, 2, 2, 3, 5, 5, 7, 7, 11, 11, 11, 11, 13, 13)
    _PRIMES = (17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 103, 109, 113, 127)

    def __init__(self) -> None:
        self.nodes: list[int] = []
        self.buckets = 1
        self.next_resize = 0

    @staticmethod
    def _link(nodes: list[int], v: int, buckets: int) -> None:
        first = next((i for i, x in enumerate(nodes) if x % buckets == v % buckets), 0)
        nodes.insert(first, v)

    def add(self, v: int) -> None:
        if v in self.nodes:
            return
        n = len(self.nodes)
        if n + 1 > self.next_resize:
            min_buckets = max(n + 1, 0 if self.next_resize else 11)
            if min_buckets >= self.buckets:
                want = max(min_buckets + 1, self.buckets * 2)
                count = (
                    self._FAST[want] if want < len(self._FAST) else next(p for p in self._PRIMES if p >= want)
                )
                self.next_resize = count
                relinked: list[int] = []
                for x in self.nodes:
                    self._link(relinked, x, count)
                self.nodes, self.buckets = relinked, count
            else:
                self.next_resize = self.buckets
        self._link(self.nodes, v, self.buckets)

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.nodes))


class _Micro(_AmxBlocking):
    """`matmul_amx_blocking_params_micro_t`: the AMX heuristic for transposed A (and the macro's fallback)."""

    def set_blocking_parameters(self, nthr_k: int, n_blk: int, n_cs: int, m_blk: int, m_cs: int) -> None:
        c = self.c
        self.nthr_k_ = max(1, nthr_k)
        self.nthr_mnb_ = c.nthr // self.nthr_k_
        self.nthr_ = self.nthr_mnb_ * self.nthr_k_
        self.n_blk_, self.n_chunk_size_, self.m_blk_, self.m_chunk_size_ = n_blk, n_cs, m_blk, m_cs
        if 0 in (n_blk, n_cs, m_blk, m_cs):
            self.k_blk_ = self.k_chunk_size_ = self.k_chunk_elems_ = self.brgemm_batch_size_ = 0
            self.efficiency_score_ = 0.0
            return
        self.n_chunk_elems_ = n_blk * n_cs
        self.m_chunk_elems_ = m_blk * m_cs
        if c.wei_k_blk > c.K:
            self.k_blk_ = _rnd_up(c.K, c.required_k_granularity)
            self.brgemm_batch_size_ = 1
        else:
            self.k_blk_ = min(_rnd_up(_cdiv(c.K, self.nthr_k_), c.required_k_granularity), c.wei_k_blk)
            k_blocks_per_thread = _cdiv(_cdiv(c.K, self.k_blk_), self.nthr_k_)
            self.brgemm_batch_size_ = k_blocks_per_thread
            chunk = self.chunk_memory_size()
            div_min, div_max = chunk // self.L2_threshold(), _cdiv(chunk, self.L2_threshold())
            if div_min > (2 if c.lda_big_pow2() else 0) and self.brgemm_batch_size_ > 1:
                kc1 = max(self.brgemm_batch_size_ // div_min, 1)
                kc2 = _cdiv(self.brgemm_batch_size_, div_max)
                tail1, tail2 = k_blocks_per_thread % kc1, k_blocks_per_thread % kc2
                self.brgemm_batch_size_ = kc2 if (not (tail1 == 0 or tail2 < tail1)) or tail2 == 0 else kc1
            self.k_chunk_elems_ = self.k_blk_ * self.brgemm_batch_size_ * self.k_chunk_size_
            brgemm_k = self.k_blk_ * self.brgemm_batch_size_
            k_tail = c.K % self.k_blk_
            self.extendable_k_ = (
                c.K % c.wei_k_blk != 0
                and brgemm_k > c.wei_k_blk
                and not c.use_buffer_a
                and self.current_lda_ == c.K
            )
            if self.extendable_k_:
                self.k_blk_ = c.K if brgemm_k >= c.K else brgemm_k
                self.k_chunk_size_ = self.brgemm_batch_size_ = 1
            elif k_tail == 0 and c.K % brgemm_k == 0:
                self.k_blk_, self.brgemm_batch_size_ = brgemm_k, 1
            elif self.nthr_k_ == 1 and brgemm_k + k_tail == c.K:
                self.k_blk_, self.brgemm_batch_size_ = brgemm_k, 2
        self.need_buf_a_ = c.use_buffer_a or (not self.extendable_k_ and c.K % c.required_k_granularity != 0)
        self.blocking_chunk_mem_size_ = self.chunk_memory_size()
        self.efficiency_score_ = self.scores()

    def chunk_memory_size(self) -> int:
        c = self.c
        self.k_chunk_elems_ = self.k_blk_ * self.k_chunk_size_ * self.brgemm_batch_size_
        self.current_lda_ = self.get_actual_lda()
        self.need_buf_c_ = self.is_buffer_c_required()
        m, n, k = self.m_chunk_elems_, self.n_chunk_elems_, self.k_chunk_elems_
        a_buf = c.tr_a_dt_sz * self.current_lda_ * self.brgemm_batch_size_ * m if self.need_buf_a_ else 0
        b_buf = c.tr_b_dt_sz * self.n_blk_ * k if c.use_buffer_b else 0
        c_buf = c.acc_dt_sz * m * n if self.need_buf_c_ else 0
        return c.a_dt_sz * k * m + a_buf + c.b_dt_sz * k * n + b_buf + c.c_dt_sz * m * n + c_buf

    def scores(self) -> float:
        c = self.c
        if 0 in (self.n_blk_, self.n_chunk_size_, self.m_blk_, self.m_chunk_size_, self.k_blk_):
            return 0.0
        if self.brgemm_batch_size_ == 0:
            return 0.0
        # thread balance
        m_chunks, n_chunks = _cdiv(c.M, self.m_chunk_elems_), _cdiv(c.N, self.n_chunk_elems_)
        mnb = _f32(c.batch * _f32(_f32(c.M) / self.m_chunk_elems_))
        mnb = _f32(mnb * _f32(_f32(c.N) / self.n_chunk_elems_))
        mnb = _f32(_f32(mnb / _f32(_rnd_up(c.batch * m_chunks * n_chunks, self.nthr_mnb_))) * self.nthr_mnb_)
        k_par = 1.0
        if self.nthr_k_ > 1:
            k_chunks = _cdiv(c.K, self.k_chunk_elems_)
            k_par = _f32(_f32(0.8) * _f32(_f32(c.K) / self.k_chunk_elems_))
            k_par = _f32(_f32(k_par / _f32(_rnd_up(k_chunks, self.nthr_k_))) * self.nthr_k_)
        balance = _f32(_f32(mnb * k_par) / c.nthr)
        # copied data re-use
        coef_m = min(_f32(_f32(self.m_chunk_elems_) / min(c.M, 256)), 1.0)
        coef_n = min(_f32(_f32(self.n_chunk_elems_) / min(c.N, 64 * (4 if self.need_buf_a_ else 1))), 1.0)
        reuse = _f32(_f32(0.5) * _f32(coef_m + coef_n))
        # L2 utilisation
        l2, size = self.L2_threshold(), self.blocking_chunk_mem_size_
        l2_score = _f32(1.0 - _f32(_f32(abs(_f32(_f32(l2) - _f32(size)))) / _f32(max(l2, size))))
        nthr_coeff = _f32(min(c.nthr, 100))
        balance_f = _f32(_f32(nthr_coeff - 1.0) / nthr_coeff)
        cache_f = _f32(1.0 / nthr_coeff)
        s = _f32(_f32(cache_f * l2_score) + reuse)
        if balance_f > 0.0:
            s = _f32(s + _f32(balance_f * balance))
        return _f32(s / _f32(_f32(1.0 + balance_f) + cache_f))

    @classmethod
    def find_best_blocking(cls, c: _Conf, h: Host) -> _Micro:
        best, cur = cls(c, h), cls(c, h)
        max_k_work = _cdiv(c.K, 1024)
        max_nthr_k = min(min(max(1, c.nthr // 8), 7), max_k_work) if c.batch == 1 else 1
        keep_skipped = c.M == 4 and (c.N, c.K) in ((4096, 4096), (11008, 4096), (4096, 11008))
        for nthr_k in range(1, max_nthr_k + 1):
            nthr_bmn = c.nthr // nthr_k
            num_m_blk, num_n_blk = _cdiv(c.M, c.M_blk), _cdiv(c.N, c.N_blk)
            work = c.batch * num_m_blk * num_n_blk * min(max_k_work, nthr_k)
            low_parallelism = _f32(work) < _f32(1.5 * c.nthr)
            min_m_blk = _cdiv(c.M_blk, 2) if low_parallelism and c.M_blk > 32 else c.M_blk
            min_n_blk = c.N_blk  # B's layout is given: its n block is fixed
            m_chunk = min(4, num_m_blk)
            n_chunk = min(6 if work > 16 * c.nthr else 4, num_n_blk)
            m_blocks = _UnorderedIntSet()
            m = c.M_blk
            while m >= min_m_blk:
                m_blocks.add(m)
                m = _cdiv(m, 2) if m > 1 else m - 1
            if c.M > 16:
                for m in range(min(c.M // 16 * 16, 64), _rnd_up(min_m_blk, 16) - 1, -16):
                    m_blocks.add(m)
            found = False
            for n_blk in range(c.N_blk, min_n_blk - 1, -16):
                for m_blk in m_blocks:
                    for n_cs in range(n_chunk, 0, -1):
                        for m_cs in range(m_chunk, 0, -1):
                            cur.set_blocking_parameters(nthr_k, n_blk, n_cs, m_blk, m_cs)
                            chunks = c.batch * _cdiv(c.M, m_blk * m_cs) * _cdiv(c.N, n_blk * n_cs)
                            skip = chunks < nthr_bmn * 3 and chunks % nthr_bmn != 0 and max_nthr_k == 1
                            if skip and not keep_skipped:
                                continue
                            if cur.efficiency_score_ > best.efficiency_score_:
                                best = copy.copy(cur)
                                found = True
            if not found:
                cur.set_blocking_parameters(nthr_k, min_n_blk, 1, min_m_blk, 1)
                if cur.efficiency_score_ > best.efficiency_score_:
                    best = copy.copy(cur)
        return best


# --------------------------------------------------------------------------- AVX-512 blocking


@dataclass
class _Avx512Blocking:
    """`matmul_avx512_blocking_params_t`."""

    M: int
    N: int
    K: int
    batch: int
    nthr: int
    m_blk: int = 1
    n_chunks: int = 1
    n_blk: int = 1
    k_blk: int = 1
    nthr_k: int = 1

    @staticmethod
    def _disbalance(work: int, block: int) -> float:
        mod = work % block
        return _f32(_f32(block - mod if work < block else min(block - mod, mod)) / block)

    def imbalance(self) -> float:
        nthr_mnb = self.nthr // self.nthr_k
        work = _cdiv(self.M, self.m_blk) * _cdiv(self.N, self.n_blk * self.n_chunks) * self.batch
        n_blocks = _cdiv(self.N, self.n_blk)
        parts = (
            self._disbalance(work, nthr_mnb),
            _f32(_f32((self.m_blk * _cdiv(self.M, self.m_blk)) % self.M) / self.M),
            _f32(_f32(_f32(_cdiv(n_blocks, self.n_chunks)) * self.n_chunks - n_blocks) / n_blocks),
            _f32(_f32(self.nthr - nthr_mnb * self.nthr_k) / self.nthr)
            if nthr_mnb * self.nthr_k != self.nthr
            else 0.0,
            self._disbalance(self.K, self.nthr_k * self.k_blk),
        )
        total = parts[0]
        for p in parts[1:]:
            total = _f32(total + p)
        return _f32(total / 5)

    def update_configuration(self, c: _Conf) -> None:
        c.M_blk, c.M_chunk_size, c.N_blk, c.N_chunk_size = self.m_blk, 1, self.n_blk, self.n_chunks
        c.K_blk = _rnd_up(self.k_blk, c.required_k_granularity)
        c.brgemm_batch_size = 1
        c.nthr_k = self.nthr_k
        # `is_buffer_c_required` reads bgmmc.K_chunk_elems, still 0 here: a C buffer whenever K > 0
        c.use_buffer_c = c.K_chunk_elems < self.K or self.K % self.k_blk > 0
        if c.use_buffer_a or c.treat_A_as_plain:
            if not c.use_buffer_a:
                c.LDA = self.K
            else:
                elems = 64 // c.tr_a_dt_sz
                lda = _rnd_up(self.k_blk, elems)
                c.LDA = lda + elems if lda >= 512 and _is_pow2(lda) else lda
        else:
            c.LDA = c.A_stride(1) // c.a_dt_sz


def _blocking_avx512(c: _Conf) -> None:
    """`compute_blocking_heuristic_avx512` for bf16/f16 (B's n block fixed, no K partitioning)."""
    M, N, K, nthr = c.M, c.N, c.K, c.nthr
    max_m_blk, min_m_blk = min(256, M), min(32, M)
    n_chunks = _cdiv(N, c.N_blk)
    n_chunks_start = min(16 if c.use_buffer_a else 1, n_chunks)
    k_blk = min(K, 1024 if K > 1024 and not c.transposed_A_tag else 512)
    start_nthr_k = 1
    if nthr > c.batch * n_chunks:  # low parallel work
        min_m_blk = min(M, 16)
        if c.batch == 1 and c.transposed_A_tag and (c.orig_dt != "bf16" or _is_pow2(K)) and K >= 2048:
            start_nthr_k = min(nthr, 4)
    best: _Avx512Blocking | None = None
    best_imbalance = 1.0
    for nthr_k in range(start_nthr_k, 0, -1):
        found = False
        for n_cs in range(n_chunks_start, 0, -1):
            for m_blk in range(max_m_blk, min_m_blk - 1, -1):
                cur = _Avx512Blocking(M, N, K, c.batch, nthr, m_blk, n_cs, c.N_blk, k_blk, nthr_k)
                imbalance = cur.imbalance()
                work = c.batch * _cdiv(M, m_blk) * _cdiv(N, c.N_blk * n_cs)
                nthr_bmn = nthr // nthr_k
                if work < nthr_bmn * 3 and work % nthr_bmn != 0 and start_nthr_k == 1:
                    continue
                if imbalance < best_imbalance:
                    best_imbalance, best, found = imbalance, cur, True
        if not found:
            cur = _Avx512Blocking(M, N, K, c.batch, nthr, min_m_blk, 1, c.N_blk, k_blk, nthr_k)
            imbalance = cur.imbalance()
            if imbalance < best_imbalance:
                best_imbalance, best = imbalance, cur
    if best is None:
        raise _Unimplemented("blocking")
    best.update_configuration(c)


# --------------------------------------------------------------------------- the AMX kernel's tiles


def _tile_workspace(
    BD: int, LD: int, RD: int, bs: int, extendable_k: bool, fused_copy_a: bool, l1: int
) -> int:
    """`brgemm_desc_t::get_wsp_buffer_size` after `brgemm_blocking_tmm` (unrolled kernel, no bd mask)."""
    bd_block = bdb = bdb_tail = bd_block2 = ld_block2 = 0
    ld_block, ldb, ldb_tail = 16, LD // 16, LD % 16
    is_m_tail = False

    def by_ld() -> None:
        nonlocal ld_block2, bd_block2
        if bd_block2 == 1 and ldb > 0 and ldb_tail == 0:
            ld_block2 = 3 if ldb % 3 == 0 else 2 if ldb % 2 == 0 else 1
        else:
            ld_block2 = 2 if ldb > 0 and ldb % 2 == 0 and ldb_tail == 0 and bd_block2 < 3 else 1
        if ld_block2 == 1 and not is_m_tail and ldb_tail == 0:
            bd_block2 = 3 if bdb >= 3 else 2 if bdb >= 2 else 1

    def three_by_one(width: int) -> bool:
        nonlocal bd_block, bdb, bdb_tail, bd_block2, is_m_tail
        is_m_tail = False
        if (width - 1) * 16 < BD < width * 16 and ldb_tail == 0:
            bd_block, bdb, bdb_tail, is_m_tail = 16, _cdiv(BD, 16), BD % 16, True
            bd_block2 = width
            by_ld()
            return True
        return False

    def two_by_two() -> bool:
        nonlocal bd_block, bdb, bdb_tail, bd_block2, is_m_tail
        bd_block = next(m for m in range(16, 0, -1) if BD % m == 0)
        if bd_block == 1:
            bd_block, bdb_tail = min(16, BD), BD % 16
            for i in range(16, 0, -1):
                if BD % i > bdb_tail or BD % i == 0:
                    bd_block, bdb_tail = i, BD % i
                    if BD % i == 0:
                        break
        bdb, bdb_tail = BD // bd_block, BD % bd_block
        bd_block2 = 2 if bdb >= 2 else 1
        is_m_tail = False
        by_ld()
        return not (ld_block2 == 1 or bd_block2 == 1 or bd_block < 8)

    def recalc(new_bd: int, new_ld: int, new_bd2: int, new_ld2: int) -> None:
        nonlocal bd_block, bdb, bdb_tail, is_m_tail, ld_block, ldb, ldb_tail, bd_block2, ld_block2
        if new_bd:
            bd_block, bdb, bdb_tail = new_bd, _cdiv(BD, new_bd), BD % new_bd
            is_m_tail = bdb_tail != 0
        if new_ld:
            ld_block, ldb, ldb_tail = new_ld, _cdiv(LD, new_ld), LD % new_ld
        bd_block2 = new_bd2 or bd_block2
        ld_block2 = new_ld2 or ld_block2

    if not (two_by_two() or three_by_one(3) or three_by_one(2)):
        two_by_two()
    recalc(bd_block, ld_block, bd_block2, ld_block2)
    eff_k, low_k = RD * 2, (l1 - 4 * 1024) // (6 * 16)
    bdb_block_tail = not (bd_block > 12 and BD % bd_block == 0)
    ldb_tail_16 = LD % 16 != 0
    if not bdb_block_tail and not ldb_tail_16:
        k5 = low_k <= eff_k < (l1 - 5 * 1024) // (5 * 16)
        k4 = low_k <= eff_k < (l1 - 4 * 1024) // (4 * 16)
        if LD % 80 == 0 and k5 and BD > 32:
            recalc(0, 16, 1, 5)
        elif LD % 64 == 0 and k4 and BD > 32:
            recalc(0, 16, 1, 4)
        elif BD % 80 == 0 and k5 and LD > 32:
            recalc(0, 16, 5, 1)
        elif BD % 64 == 0 and k4 and LD > 32:
            recalc(16, 16, 4, 1)
    weak_ldb, weak_bdb = ld_block < 8 or ldb_tail > 0, bd_block < 8 or bdb_tail > 0
    ldb_tail_only, bdb_tail_only = ldb_tail_16 and not bdb_block_tail, bdb_block_tail and not ldb_tail_16
    ld_r16, bd_r16 = _rnd_up(LD, 16), _rnd_up(BD, 16)
    if ldb_tail_only and LD > 64 and ld_block < 8:
        recalc(0, 16, 2, 1)
    elif ldb_tail_only and weak_ldb and ld_r16 in (64, 48, 32):
        recalc(0, 16, *{64: (1, 4), 48: (1, 3), 32: (2, 2)}[ld_r16])
    elif BD <= 16:
        recalc(BD, 16, 0, 0)
        recalc(0, 0, 1, min((3 if ldb > 4 else 4) if ldb_tail_16 else 5, _cdiv(LD, 16)))
    elif bdb_tail_only and weak_bdb and BD > 64:
        recalc(16, 16, 1, 2)
    elif bdb_tail_only and weak_bdb and bd_r16 in (64, 48):
        recalc(16, 16, *{64: (4, 1), 48: (3, 1)}[bd_r16])
    elif bdb_tail_only and weak_bdb and bd_r16 == 32 and LD % 32 == 0:
        recalc(16, 16, 2, 2)
    elif LD <= 16:
        recalc(16, 16, 0, 0)
        recalc(0, 0, min((3 if bdb > 4 else 4) if bdb_tail else 5, _cdiv(BD, 16)), 1)
    elif bdb_block_tail and ldb_tail_16 and bd_r16 == 32 and ld_r16 == 32 and (weak_ldb or weak_bdb):
        recalc(16, 16, 2, 2)
    bd2 = bdb if bdb <= bd_block2 else bd_block2 + (1 if bdb_tail else 0)
    ld2 = ldb if ldb <= ld_block2 else ld_block2 + (1 if ldb_tail else 0)
    c_tiles = bd2 * ld2
    a_tiles = max(2 if bdb_tail and bdb > 1 else 1, min(bd2, 8 - c_tiles - 1))
    b_tiles = max(2 if ldb_tail and ldb > 1 else 1, min(ld2, 8 - c_tiles - a_tiles))
    if a_tiles + b_tiles + c_tiles > 8:
        raise _Unimplemented("tiles")
    size = c_tiles * _TILE
    if extendable_k and (RD % 2 != 0 or (RD > 32 and RD % 32 != 0)):
        size += _TILE  # amx_wary_k_tail
    if fused_copy_a:
        size += bs * BD * _rnd_up(RD, 32) * 2
    return size


# --------------------------------------------------------------------------- the configuration


def _configure(p: Matmul, isa: str, h: Host) -> _Conf:
    """`init_brgemm_matmul_conf` + `init_aux_values` for a bf16/f16 problem on `isa`."""
    c = _Conf(p, isa)
    batch_dims = (c.batch,) if p.batch else ()
    src_dims, wei_dims = (*batch_dims, c.M, c.K), (*batch_dims, c.K, c.N)
    src_tag, wei_tag = _pick_tag(src_dims, p.src_strides), _pick_tag(wei_dims, p.wei_strides)
    if not src_tag or not wei_tag:
        raise _Unimplemented("tags")
    c.transposed_A_tag = src_tag in ("ba", "acb")
    c.src_plain = not c.transposed_A_tag
    c.treat_A_as_plain = c.M == 1 and _canonical(src_dims, p.src_strides)
    c.transposed_A = c.transposed_A_tag and not c.treat_A_as_plain
    c.transposed_B = wei_tag in ("ba", "acb")
    c.required_k_granularity = _vnni(c.wei_dt) if c.is_amx else 1
    c.wei_k_blk = 16 * _vnni(c.wei_dt)
    macro = _Macro.is_supported(c)
    c.wei_n_blk = 32 if macro else 64
    c.use_buffer_b = True  # plain or transposed B is always packed
    c.use_buffer_a = (p.f16 and isa == FP16) or c.transposed_A
    c.N_blk = min(c.wei_n_blk, c.N)
    prefer_copy_a = (c.orig_dt == "bf16" or c.is_amx) and c.lda_big_pow2() and c.M >= 1024
    if c.is_amx:
        done = False
        if macro:
            best = _Macro.find_best_blocking(c, h)
            if best.efficiency_score_ != 0.0:
                best.update_configuration(c)
                done = True
        if not done:
            c.use_buffer_a |= prefer_copy_a
            c.M_blk = next(
                (s * r for r in range(16, 12, -1) for s in range(4, 1, -1) if c.M % (s * r) == 0),
                min(c.M, 64),
            )
            if c.wei_k_blk > c.K:
                c.K_blk = _rnd_up(c.K, c.required_k_granularity)
            else:
                c.K_blk = c.wei_k_blk if c.K % c.wei_k_blk else c.K
            c.brgemm_batch_size = max(c.K // c.K_blk, 1)
            micro = _Micro.find_best_blocking(c, h)
            if micro.efficiency_score_ == 0.0:
                raise _Unimplemented("blocking")
            micro.update_configuration(c)
    else:
        c.use_buffer_a |= prefer_copy_a
        _blocking_avx512(c)
    if c.wei_n_blk > c.N_blk and c.N_blk != c.N:
        c.wei_n_blk = _rnd_up(c.N_blk, 64 // (_vnni(c.wei_dt) * c.tr_b_dt_sz))
    m_tail, n_tail = c.M % c.M_blk, c.N % c.N_blk
    k_tail = 0
    if c.K_blk < c.K:
        k_tail = c.K % c.K_blk
        if not (c.extendable_k or c.use_fused_copy_a):
            k_tail = _rnd_up(k_tail, c.required_k_granularity)
    c.LDB = c.wei_n_blk
    c.LDD = c.N if (c.ndims == 2 and c.M == 1) else p.dst_strides[-2]
    if c.use_buffer_c and c.nthr_k <= 1:
        c.LDC = min(32, c.N_blk) if c.is_amx else c.N_blk
    else:
        c.LDC = c.LDD
    k_chunk_elems = c.K_blk * c.K_chunk_size * c.brgemm_batch_size
    last_bs = (max(c.K, c.K_blk) - (_cdiv(c.K, k_chunk_elems) - 1) * k_chunk_elems) // c.K_blk
    c.bs_tail = last_bs % c.brgemm_batch_size
    if c.is_amx and c.nthr_k == 1:
        chunk_c = _rnd_up(c.N_blk, c.LDC) * c.M_blk * c.acc_dt_sz
    else:
        chunk_c = c.acc_dt_sz * c.LDC * (c.M if c.nthr_k > 1 else c.M_blk)
    if not c.use_buffer_c:
        c.buffer_c = 0
    elif c.nthr_k > 1 or k_chunk_elems >= c.K:
        c.buffer_c = chunk_c
    else:
        c.buffer_c = chunk_c * c.M_chunk_size * c.N_chunk_size
    a_gb_stride = c.tr_a_dt_sz * c.M_blk * c.LDA
    c.buffer_a = a_gb_stride * c.brgemm_batch_size * c.K_chunk_size * c.M_chunk_size
    c.buffer_b = (
        c.tr_b_dt_sz
        * _rnd_up(c.N_blk, c.LDB)
        * _rnd_up(c.K_blk, c.wei_k_blk)
        * c.brgemm_batch_size
        * c.K_chunk_size
    )
    if c.is_amx and a_gb_stride <= 126:
        raise _Unimplemented("small shapes go to the AVX-512 kernel")
    c.tiles = 0
    if c.is_amx:
        for bs in (c.brgemm_batch_size, c.bs_tail) if c.bs_tail else (c.brgemm_batch_size,):
            for vm in (c.M_blk, m_tail):
                for vn in (c.N_blk, n_tail):
                    for vk, kbs in ((c.K_blk, bs), (k_tail, 1)):
                        if 0 in (vm, vn, vk, kbs) or vk > c.LDA:
                            continue
                        wsp = _tile_workspace(vm, vn, vk, kbs, c.extendable_k, c.use_fused_copy_a, h.l1)
                        c.tiles = max(c.tiles, wsp)
    return c


def _scratchpad(c: _Conf) -> int:
    """`init_scratchpad`: each entry booked with its alignment (at least 128 bytes)."""
    entries = [
        c.nthr * 16 * c.brgemm_batch_size * _BATCH_ELEMENT,
        c.nthr * c.buffer_a if c.use_buffer_a else 0,
        c.nthr * c.buffer_b if c.use_buffer_b else 0,
        c.nthr * c.buffer_c if c.use_buffer_c else 0,
        c.nthr * c.tiles,
    ]
    return sum(n + _ALIGN for n in entries if n > 0)


def _gemm_bf16(p: Matmul) -> int | None:
    """gemm_bf16_matmul_t<bf16> (cpu/matmul/gemm_bf16_matmul.cpp): an f32 accumulator per thread for its
    share of the batch*M*N outputs in whole rows (`gemm_based::get_scratchpad_num_elements`), rounded up to
    64 elements. None where its formats do not fit (then the reference matmul, no scratchpad)."""
    for strides in (p.src_strides, p.wei_strides):
        if 0 in strides or 1 not in strides[-2:]:
            return None
    if p.dst_strides[-1] != 1:
        return None

    def block(nthr: int) -> int:
        work = _cdiv(max(p.batch, 1) * p.M * p.N, nthr)
        return _rnd_up(min(p.M * p.N, work - work % p.N) if work >= p.N else work, 64)

    return 4 * max(block(1), block(p.nthr) * p.nthr) + _ALIGN


@functools.lru_cache(maxsize=4096)
def scratchpad_bytes(p: Matmul, h: Host) -> int | None:
    """The user scratchpad of the matmul oneDNN picks for `p`; None if no ported one takes it."""
    for isa in h.f16_isas if p.f16 else h.bf16_isas:
        if isa == GEMM:
            return _gemm_bf16(p)
        if isa in _UNPORTED:
            return None
        try:
            return _scratchpad(_configure(p, isa, h))
        except _Unimplemented:
            continue
    return None


# --------------------------------------------------------------------------- from the aten ops


def _nbytes(shape: tuple[int, ...]) -> int:
    n = 2
    for d in shape:
        n *= d
    return n


def _gemm(
    sizes1: tuple[int, int], s1: tuple[int, ...], sizes2: tuple[int, int], s2: tuple[int, ...],
    rs: tuple[int, ...], f16: bool, with_sum: bool, alpha: float, h: Host, copies: list[int],
) -> Matmul | None:  # fmt: skip
    """`addmm_impl_cpu_` -> `cpublas::gemm` -> `mkldnn_gemm`: the oneDNN matmul it builds, None if none.

    Operands BLAS cannot read are cloned contiguous (their bytes appended to `copies`); the column-major
    GEMM C^T = B^T A^T becomes a row-major oneDNN matmul src (n, k) x weights (k, m) -> dst (n, m).
    """
    M, N = sizes1[0], sizes2[1]
    if rs[0] == 1 and (N == 1 or rs[1] >= max(1, M)):
        tc, cs = False, rs
    elif rs[1] == 1 and (M == 1 or rs[0] >= max(1, N)):
        tc, cs = True, rs
        sizes1, sizes2, s1, s2 = sizes2, sizes1, s2, s1
    else:
        tc, cs = False, (1, M)
        copies.append(_nbytes((M, N)))
    m, n = (N, M) if tc else (M, N)
    k = sizes1[0] if tc else sizes1[1]
    i0, i1 = (1, 0) if tc else (0, 1)

    def operand(
        sizes: tuple[int, int], st: tuple[int, ...], lead: int, other: int
    ) -> tuple[bool, tuple[int, ...]]:
        if st[i0] == 1 and st[i1] >= max(1, lead):
            return False, st
        if st[i1] == 1 and st[i0] >= max(1, other):
            return True, st
        copies.append(_nbytes(sizes))
        return not tc, (sizes[1], 1)

    ta, sa = operand(sizes1, s1, m, k)
    tb, sb = operand(sizes2, s2, k, n)
    lda, ldb, ldc = sa[1 if ta == tc else 0], sb[1 if tb == tc else 0], cs[0 if tc else 1]
    # normalize_last_dims
    if n == 1:
        ldc = m
    if ta and m == 1:
        lda = k
    elif not ta and k == 1:
        lda = m
    if tb and k == 1:
        ldb = n
    elif not tb and n == 1:
        ldb = k
    device, bypass = (h.f16_device, h.f16_gemv_bypass) if f16 else (h.bf16_device, h.bf16_gemv_bypass)
    if not device or (bypass and ta and not tb and n == 1 and alpha == 1) or m * n * k <= 16 * 16 * 16:
        return None
    return Matmul(
        0, n, k, m, f16, (1, ldb) if tb else (ldb, 1), (1, lda) if ta else (lda, 1), (ldc, 1), with_sum,
        torch.get_num_threads(),
    )  # fmt: skip


def _default_strides(sizes: tuple[int, ...]) -> tuple[int, ...]:
    out, s = [], 1
    for d in reversed(sizes):
        out.append(s)
        s *= max(d, 1)
    return tuple(reversed(out))


def _contiguous(sizes: tuple[int, ...], st: tuple[int, ...]) -> bool:
    expected = 1
    for d, s in zip(reversed(sizes), reversed(st), strict=True):
        if d != 1 and s != expected:
            return False
        expected *= d
    return True


def _batched(
    b1: torch.Tensor, b2: torch.Tensor, out: torch.Tensor, with_sum: bool, h: Host, copies: list[int]
) -> Matmul | None:
    """`bmm_out_or_baddbmm_` -> `mkldnn_matmul`; operands neither contiguous nor transposed are copied."""
    B, M, K = (int(x) for x in b1.shape)
    N = int(b2.shape[2])
    f16 = b1.dtype == torch.float16
    if not (h.f16_device if f16 else h.bf16_device) or B * M * K * N <= 16 * 16 * 16:
        return None

    def layout(t: torch.Tensor) -> tuple[int, ...]:
        sizes, st = tuple(int(x) for x in t.shape), tuple(int(x) for x in t.stride())
        if _contiguous(sizes, st):
            return _default_strides(sizes)
        if st[0] == sizes[1] * sizes[2] and st[1] == 1 and st[2] == sizes[1]:
            return st
        copies.append(_nbytes(sizes))
        return _default_strides(sizes)

    src, wei = layout(b1), layout(b2)
    osizes, ost = tuple(int(x) for x in out.shape), tuple(int(x) for x in out.stride())
    dst = _default_strides(osizes) if _contiguous(osizes, ost) else ost
    return Matmul(B, M, K, N, f16, src, wei, dst, with_sum, torch.get_num_threads())


def _lowp(*ts: Any) -> bool:
    return all(isinstance(t, torch.Tensor) and t.dtype in (torch.bfloat16, torch.float16) for t in ts)


def _workspace(problem: Matmul | None, copies: list[int], h: Host) -> Workspace | None:
    scratch = scratchpad_bytes(problem, h) if problem is not None else None
    if not copies and not scratch:
        return None
    ws = Workspace()
    ws.outputs()
    for nbytes in copies:
        ws.alloc(nbytes)
    if scratch:
        ws.free(ws.alloc(scratch))
    return ws


def _scalar(args: Any, kwargs: Any, index: int, name: str) -> float:
    v = kwargs.get(name, args[index] if len(args) > index else 1)
    return float(v)


def gemm_workspace(m1: Any, m2: Any, out: Any, beta: float = 0.0, alpha: float = 1.0) -> Workspace | None:
    """A bf16/fp16 `mm`/`addmm` on the CPU: operand copies, then the oneDNN scratchpad."""
    h = host()
    if h is None or not isinstance(out, torch.Tensor) or not _lowp(m1, m2) or m1.dim() != 2 or m2.dim() != 2:
        return None
    M, K, N = int(m1.shape[0]), int(m1.shape[1]), int(m2.shape[1])
    if out.numel() == 0 or K == 0:
        return None
    copies: list[int] = []
    s1, s2 = tuple(int(x) for x in m1.stride()), tuple(int(x) for x in m2.stride())
    rs = tuple(int(x) for x in out.stride())
    problem = _gemm((M, K), s1, (K, N), s2, rs, m1.dtype == torch.float16, beta != 0, alpha, h, copies)
    if alpha == 0 or not torch.backends.mkldnn.enabled:
        problem = None
    return _workspace(problem, copies, h)


@rule("cpu", aten.bmm.default, aten.bmm.out)
def bmm(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    return _batched_workspace(args[0], args[1], out, 0.0, 1.0)


@rule("cpu", aten.baddbmm.default, aten.baddbmm.out)
def baddbmm(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    beta, alpha = _scalar(args, kwargs, 3, "beta"), _scalar(args, kwargs, 4, "alpha")
    return _batched_workspace(args[1], args[2], out, beta, alpha)


def _batched_workspace(b1: Any, b2: Any, out: Any, beta: float, alpha: float) -> Workspace | None:
    h = host()
    if h is None or not isinstance(out, torch.Tensor) or not _lowp(b1, b2) or b1.dim() != 3 or b2.dim() != 3:
        return None
    if out.numel() == 0 or b1.shape[2] == 0 or not torch.backends.mkldnn.enabled:
        return None
    copies: list[int] = []
    problem = _batched(b1, b2, out, beta != 0, h, copies)
    if alpha == 0:
        problem = None  # mkldnn_matmul returns before the primitive; the copies are made
    return _workspace(problem, copies, h)
