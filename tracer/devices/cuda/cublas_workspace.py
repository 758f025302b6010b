"""The cuBLAS / cuBLASLt workspace: allocated through the caching allocator at a thread's first matmul on
a stream, and kept for the life of the process (so it counts in `torch.cuda.max_memory_allocated`).

From `aten/src/ATen/cuda/CublasHandlePool.cpp` as PyTorch 2.13 builds it. The exact release/2.13 file was
not in the source store: this follows the stored main-branch versions around the 2.13 branch cut (8 June
2026), checked against what the torch 2.13.0 wheel's `ATen/cuda/CUDAContextLight.h` declares (a
`WorkspaceMapWithMutex` keyed by `(handle, stream)`, `getCurrentCUDABlasHandle(bool setup)`, the size
overrides; no thread-local maps, no eager per-call workspaces) and the pull requests that changed it.

- `parseChosenWorkspaceSize`: `CUBLAS_WORKSPACE_CONFIG` as `:SIZE:COUNT` groups (KiB x count, summed; the
  regex `:([0-9]+):([0-9]+)`); unset, or no group found, gives the default: `4096 * 1024 * 2 + 16 * 1024 *
  8` = 8,519,680 bytes, and 32 MiB where the compute capability's major is 9, 10 or 12 (pytorch#175344,
  February 2026; sm 11 joined later, pytorch#189312, July 2026, after the 2.13 branch cut).
- `setWorkspaceForHandle`: the workspace map is keyed by `(cublasHandle_t, cudaStream_t)`. Handles come from
  `DeviceThreadHandlePool`, one per host thread, so autograd's CUDA device thread, which runs backward,
  holds a second handle and so a second workspace (the thread-local `(device, stream)` maps of pytorch#180283
  came after 2.13 and were reverted; keyed either way, backward has its own).
- cuBLASLt (`getCUDABlasLtWorkspace`): with `TORCH_CUBLASLT_UNIFIED_WORKSPACE` unset or 1 (the default
  outside fbcode; `c10::utils::check_env`: "0" is false, "1" true, anything else unset) it uses the cuBLAS
  workspace of its `(handle, stream)`, allocating it at the cuBLAS size if the Lt call comes first. With 0,
  Lt keeps its own map of `CUBLASLT_WORKSPACE_SIZE` KiB workspaces (`std::stoi`; default 1024 KiB, the
  1 MiB restored by pytorch#183923 in May 2026).

Which ops reach cuBLAS: every `at::cuda::blas` gemm/gemv/dot caller (mm, addmm, bmm, baddbmm, addbmm,
addmv, mv, dot, vdot) takes the handle, which sets its workspace. Lt: `addmm` with a bias it can fuse and
`_addmm_activation` (`gemm_and_bias`), `_scaled_mm`, `_int_mm`; without a unified workspace they are taken
as Lt-only (the handle is fetched with `setup=false`), an approximation for addmm, whose Lt path depends on
the bias and layouts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

DEFAULT_BYTES = 4096 * 1024 * 2 + 16 * 1024 * 8  # ":4096:2:16:8"
LARGE_BYTES = 4096 * 8 * 1024  # 32 MiB
LARGE_MAJORS = frozenset({9, 10, 12})  # Hopper and Blackwell in 2.13
LT_DEFAULT_KIB = 1024
_GROUP = re.compile(r":([0-9]+):([0-9]+)")
_STOI = re.compile(r"\s*([+-]?[0-9]+)")
_INT_MAX = 2**31 - 1


def _major(compute_capability: str) -> int:
    return int(compute_capability.split(".")[0])


def default_bytes(compute_capability: str) -> int:
    """The cuBLAS workspace without CUBLAS_WORKSPACE_CONFIG, for a compute capability such as "9.0"."""
    return LARGE_BYTES if _major(compute_capability) in LARGE_MAJORS else DEFAULT_BYTES


def cublas_bytes(compute_capability: str, env: Mapping[str, str] | None = None) -> int:
    """`getChosenWorkspaceSize()`: CUBLAS_WORKSPACE_CONFIG's groups summed, else the default."""
    text = (os.environ if env is None else env).get("CUBLAS_WORKSPACE_CONFIG")
    groups = _GROUP.findall(text) if text else []
    if not groups:
        return default_bytes(compute_capability)
    return sum(int(size) * 1024 * int(count) for size, count in groups)


# The first release whose cuBLASLt shares the cuBLAS workspace by default (pytorch#168175, #175879; both
# after the 2.11 branch cut). Measured on an H200 with torch 2.11.0+cu130: an `addmm` with a 1-d bias
# allocates the 32 MiB cuBLAS workspace (`setWorkspaceForHandle`) and then its own 1 MiB cuBLASLt workspace
# (`getCUDABlasLtWorkspace`), with the variable unset and with it 0 alike.
UNIFIED_SINCE = (2, 12)
Version = tuple[int, int]


def unified(env: Mapping[str, str] | None = None, torch_version: Version = UNIFIED_SINCE) -> bool:
    """Whether cuBLASLt shares the cuBLAS workspace: TORCH_CUBLASLT_UNIFIED_WORKSPACE=1, or unset on a
    PyTorch that unifies by default."""
    value = (os.environ if env is None else env).get("TORCH_CUBLASLT_UNIFIED_WORKSPACE")
    if value in ("0", "1"):
        return value == "1"
    return torch_version >= UNIFIED_SINCE


def lt_sets_up_cublas(env: Mapping[str, str] | None = None, torch_version: Version = UNIFIED_SINCE) -> bool:
    """Whether a cuBLASLt call also makes its thread's cuBLAS workspace: always when unified (it is the
    workspace it uses), and before 2.12 without unification too (the handle was fetched with setup; measured
    on 2.11), but not from 2.12 on (`getCurrentCUDABlasHandle(false)`)."""
    return unified(env, torch_version) or torch_version < UNIFIED_SINCE


def cublaslt_bytes(
    compute_capability: str, env: Mapping[str, str] | None = None, torch_version: Version = UNIFIED_SINCE
) -> int:
    """The bytes a cuBLASLt call's first use on a (handle, stream) allocates: the cuBLAS workspace when
    unified, else CUBLASLT_WORKSPACE_SIZE KiB (std::stoi of it; invalid or out of range: 1024; a negative
    value, which PyTorch would wrap to a huge size_t, is taken as invalid)."""
    env = os.environ if env is None else env
    if unified(env, torch_version):
        return cublas_bytes(compute_capability, env)
    found = _STOI.match(env.get("CUBLASLT_WORKSPACE_SIZE", ""))
    kib = int(found.group(1)) if found else LT_DEFAULT_KIB
    return (kib if 0 <= kib <= _INT_MAX else LT_DEFAULT_KIB) * 1024


def workspace_key(
    lt: bool,
    backward_thread: bool,
    env: Mapping[str, str] | None = None,
    torch_version: Version = UNIFIED_SINCE,
) -> str:
    """Which workspace map entry a call uses: the library's map (one, when unified) and the host thread."""
    library = "cublaslt" if lt and not unified(env, torch_version) else "cublas"
    return f"{library}:{'autograd' if backward_thread else 'main'}"
