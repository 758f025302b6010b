"""Which instruction sets this process's oneDNN and ATen kernels use: the one place CPU rules ask.

oneDNN (x86-64) picks its kernels with `mayiuse(isa)` (src/cpu/x64/cpu_isa_traits.hpp): the ISA's feature
bits must lie within the cap ONEDNN_MAX_CPU_ISA (older name DNNL_MAX_CPU_ISA; read once, lower-cased, an
unknown value means no cap) and the CPU must have its features (AMX also needs the kernel's permission,
`arch_prctl(ARCH_REQ_XCOMP_PERM)`). Its "effective ISA" (`dnnl::get_effective_cpu_isa`, which ideep and so
PyTorch's bf16/fp16 checks compare against) is the best ISA `mayiuse` accepts. ATen's own vectorized
kernels follow `torch.backends.cpu.get_cpu_capability()`, which ATEN_CPU_CAPABILITY lowers; it does not
cap oneDNN. Off x86-64 (aarch64: oneDNN runs ACL and SVE kernels) no x86 ISA applies: `onednn_isa()` is
"" and every `mayiuse` is False.

Both oneDNN and this module read the environment once per process (the results are cached).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from pathlib import Path

import torch

# cpu_isa_bit_t (oneDNN v3.x): the avx10 version in bits 0-3, then one bit per feature group
_VERSION = 0xF
_XMM, _YMM, _ZMM, _AMX_TILE = 1 << 4, 1 << 5, 1 << 6, 1 << 7
_EVEX, _AVX2, _VNNI, _VNNI2 = 1 << 8, 1 << 9, 1 << 10, 1 << 11
_EVEX_VNNI, _EVEX_BF16, _EVEX_FP16 = 1 << 12, 1 << 13, 1 << 14
_AMX_INT8, _AMX_BF16, _AMX_FP16, _AMX_2 = 1 << 15, 1 << 16, 1 << 17, 1 << 18
_ALL = 0x7FFFFFFF  # isa_all: every bit but the prefer_ymm hint

_AVX2_ISA = _AVX2 | _YMM | _XMM
_AVX512 = _EVEX | _ZMM | _AVX2_ISA
_BF16 = _EVEX_BF16 | _EVEX_VNNI | _AVX512
_AVX10 = _AVX2 | _VNNI | _EVEX | _EVEX_VNNI | _EVEX_BF16 | _EVEX_FP16
_FP16 = 1 | _AVX10 | _ZMM | _YMM | _XMM  # avx10_1_512
_AMX = _FP16 | _AMX_INT8 | _AMX_BF16 | _AMX_TILE
_AVX10_2 = 2 | _AVX10 | _VNNI2 | _ZMM | _YMM | _XMM

# name -> (feature bits, public dnnl_cpu_isa_t value, CPU features), best first as get_isa_info_t tries them
ISAS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "avx10_2_amx_2": (_AVX10_2 | _AMX_TILE | _AMX_INT8 | _AMX_BF16 | _AMX_FP16 | _AMX_2, 0x22FFF, ("?",)),
    "avx10_2": (_AVX10_2, 0x201FF, ("?",)),  # needs APX, not detected: never taken
    "avx512_core_amx_fp16": (_AMX | _AMX_FP16, 0x1FEF, ("fp16", "amx", "amx_fp16")),
    "avx512_core_amx": (_AMX, 0xFEF, ("fp16", "amx")),
    "avx512_core_fp16": (_FP16, 0x1EF, ("bf16", "avx512_fp16", "avx_vnni")),
    "avx512_core_bf16": (_BF16, 0xE7, ("bf16",)),
    "avx512_core_vnni": (_EVEX_VNNI | _AVX512, 0x67, ("avx512", "avx512_vnni")),
    "avx512_core": (_AVX512, 0x27, ("avx512",)),
    "avx2_vnni_2": (
        _VNNI2 | _VNNI | _AVX2_ISA,
        0x1F,
        ("avx2", "avx_vnni", "avx_vnni_int8", "avx_ne_convert"),
    ),
    "avx2_vnni": (_VNNI | _AVX2_ISA, 0xF, ("avx2", "avx_vnni")),
    "avx2": (_AVX2_ISA, 0x7, ("avx2",)),
    "avx": (_YMM | _XMM, 0x3, ("avx",)),
    "sse41": (_XMM, 0x1, ("sse4_1",)),
}
_GROUPS = {  # feature groups used above, in torch.cpu.get_capabilities() names
    "avx512": ("avx512_f", "avx512_bw", "avx512_vl", "avx512_dq"),
    "bf16": ("avx512_f", "avx512_bw", "avx512_vl", "avx512_dq", "avx512_vnni", "avx512_bf16"),
    "fp16": ("avx512_f", "avx512_bw", "avx512_vl", "avx512_dq", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "avx2", "avx_vnni"),
    "amx": ("amx_tile", "amx_int8", "amx_bf16"),
}  # fmt: skip
_ALIASES = {
    "avx512_core_fp16": "avx10_1_512",
    "avx512_core_amx": "avx10_1_512_amx",
    "avx512_core_amx_fp16": "avx10_1_512_amx_fp16",
    "avx10_2_512": "avx10_2",
    "avx10_2_512_amx_2": "avx10_2_amx_2",
}
_CAP_NAMES = {  # user_option_env of each cpu_isa_traits_t
    "default": _ALL,
    **{name: ISAS[name][0] for name in ("sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core",
                                        "avx512_core_vnni", "avx512_core_bf16", "avx10_2", "avx10_2_amx_2")},
    "avx10_1_512": _FP16,
    "avx10_1_512_amx": _AMX,
    "avx10_1_512_amx_fp16": _AMX | _AMX_FP16,
}  # fmt: skip
# /proc/cpuinfo flag -> torch.cpu.get_capabilities() name, where they differ
_PROC_FLAGS = {
    "avx512f": "avx512_f",
    "avx512bw": "avx512_bw",
    "avx512vl": "avx512_vl",
    "avx512dq": "avx512_dq",
}


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


@functools.cache
def cpu_features() -> frozenset[str]:
    """The CPU's features, by the names of `torch.cpu.get_capabilities()` (x86-64, where it exists), else
    or also (off x86: "bf16", "sve"...) the flags of /proc/cpuinfo."""
    found: set[str] = set()
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        found = {k for k, v in get().items() if v is True}
        if is_x86():
            return frozenset(found)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset(found)
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(found | {_PROC_FLAGS.get(f, f) for f in value.split()})
    return frozenset(found)


def _amx_permitted() -> bool:
    """oneDNN's `amx::is_available()` on Linux: the kernel grants the tile state (ARCH_REQ_XCOMP_PERM)."""
    if platform.system() != "Linux":
        return False
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
        bitmask = ctypes.c_ulong(0)
        arch_prctl, get_perm, req_perm, xtiledata = 158, 0x1022, 0x1023, 18
        if syscall(arch_prctl, get_perm, ctypes.byref(bitmask)) != 0:
            return False
        if not bitmask.value & (1 << xtiledata) and syscall(arch_prctl, req_perm, xtiledata) != 0:
            return False
        return syscall(arch_prctl, get_perm, ctypes.byref(bitmask)) == 0 and bool(bitmask.value & 1 << 18)
    except (OSError, AttributeError):
        return False


def _has(features: tuple[str, ...]) -> bool:
    have = cpu_features()
    for f in features:
        if f == "amx" and not _amx_permitted():
            return False
        if not all(g in have for g in _GROUPS.get(f, (f,))):
            return False
    return True


@functools.cache
def onednn_cap() -> int:
    """The feature mask ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) allows; every bit when unset or unknown."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    value = value.lower()
    return _CAP_NAMES.get(_ALIASES.get(value, value), _ALL)


@functools.cache
def mayiuse(isa: str) -> bool:
    """oneDNN's `mayiuse(isa)`: within the cap (bits and avx10 version) and supported by this CPU."""
    if not is_x86() or not torch.backends.mkldnn.is_available():
        return False
    bits, _, features = ISAS[isa]
    cap = onednn_cap()
    if cap & bits & ~_VERSION != bits & ~_VERSION or cap & _VERSION < bits & _VERSION:
        return False
    return "?" not in features and _has(features)


@functools.cache
def onednn_isa() -> str:
    """oneDNN's effective ISA (`get_effective_cpu_isa`): the best one `mayiuse` accepts; "" off x86."""
    return next((isa for isa in ISAS if mayiuse(isa)), "")


def onednn_isa_at_least(isa: str) -> bool:
    """`get_effective_cpu_isa() >= isa`, compared as ideep does, on the public enum values."""
    current = onednn_isa()
    return bool(current) and ISAS[current][1] >= ISAS[isa][1]


def aten_capability() -> str:
    """ATen's vectorized kernels' level ("AVX512", "AVX2", "DEFAULT"...; ATEN_CPU_CAPABILITY lowers it)."""
    return str(torch.backends.cpu.get_cpu_capability())
