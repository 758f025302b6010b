"""Which kernel `F.scaled_dot_product_attention` runs on a CUDA GPU: a port of PyTorch's backend choice.

Pure Python, no torch import: the inputs are plain shapes, strides, dtype names and the target GPU.

Sources (PyTorch 2.13; the wheel's torch 2.13.0 is git cf30153c):
- `aten/src/ATen/native/transformers/cuda/sdp_utils.cpp`, read at pytorch/pytorch commit 001f694a (a main
  commit near 2.13; the exact 2.13 file was not available): `select_sdp_backend`, `priority_order`,
  `check_prefer_cudnn_attention`, `can_use_flash_attention`, `can_use_mem_efficient_attention`,
  `can_use_cudnn_attention` and their `check_*` filters.
- `aten/src/ATen/native/transformers/sdp_utils_cpp.h` as shipped in the torch 2.13 wheel
  (torch/include/...): `check_tensor_shapes`, `check_for_attn_mask`, `check_attn_mask_shape`,
  `check_batch_size_and_num_heads_dense<supports_gqa, requires_same_num_heads>`,
  `check_grouped_query_attention`, `check_nonzero_sequence_lengths_dense`,
  `check_last_dim_stride_equals_1_dense`, `check_runtime_disabled_*`, `input_requires_grad`.
  The commit read for sdp_utils.cpp passes a third `supports_mqa` template argument that the 2.13 header
  does not have; the 2.13 header's semantics are used.

Each backend is a list of filters run in the source's order; the first that fails is the reason the
backend was rejected. Backends are tried in the priority order (flash, efficient, math, cudnn by default;
cudnn first when `check_prefer_cudnn_attention` holds), and the first that passes is chosen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# Stated defaults for the target. A100 (sm80) when no --gpu is given. cuDNN 9.10.2 with CUDA 12.8: the
# CUDA <= 12.9 wheels ship a cuDNN older than 9.15.1 (sdp_utils.cpp cites pytorch#169849), so cuDNN
# attention is not moved first by default. Both are inputs: pass what `torch.backends.cudnn.version()`
# and `torch.version.cuda` report on the real machine.
DEFAULT_COMPUTE_CAPABILITY = "8.0"
DEFAULT_CUDNN_VERSION = 91002
DEFAULT_CUDA_VERSION = "12.8"

# The rules follow the 2.13 source. Three of them were measured absent on an H200 with torch 2.11.0+cu130
# and cuDNN 9.19 (benchmarks/results/h200-torch2.11): there cuDNN attention ran with dropout 0.1 and with
# head dim 256, and an fp32 call with a mask and enable_gqa went to math, not efficient. They apply from
# 2.12 on (which of 2.12 or 2.13 added them is not known here).
SOURCE_TORCH = (2, 13)
RULES_SINCE = (2, 12)

BACKENDS = ("flash", "efficient", "cudnn", "math")
DEFAULT_PRIORITY = ("flash", "efficient", "math", "cudnn")  # at::globalContext().sDPPriorityOrder()
_HALF = ("float16", "bfloat16")


@dataclass(frozen=True)
class Gpu:
    """The target GPU and its runtime libraries."""

    compute_capability: str = DEFAULT_COMPUTE_CAPABILITY
    cudnn_version: int = DEFAULT_CUDNN_VERSION
    cuda_version: str = DEFAULT_CUDA_VERSION
    cudnn_frontend_d256: bool = False  # CUDNN_FRONTEND_VERSION >= 12400 at PyTorch's build time
    torch_version: tuple[int, int] = SOURCE_TORCH  # (major, minor) of the PyTorch whose rules apply

    @property
    def major(self) -> int:
        return int(self.compute_capability.split(".")[0])

    @property
    def minor(self) -> int:
        parts = self.compute_capability.split(".")
        return int(parts[1]) if len(parts) > 1 else 0

    def in_range(self, low: tuple[int, int], high: tuple[int, int]) -> bool:
        """`check_sm_version<low, high>`: inclusive on both ends."""
        return low <= (self.major, self.minor) <= high


@dataclass(frozen=True)
class Flags:
    """The global switches `torch.backends.cuda.enable_*_sdp` and `sdpa_kernel` set."""

    flash: bool = True
    efficient: bool = True
    math: bool = True
    cudnn: bool = True
    priority: tuple[str, ...] = DEFAULT_PRIORITY
    deterministic: bool = False
    deterministic_warn_only: bool = False
    fa3: bool = False  # userEnabledFA3SDP

    def enabled(self, backend: str) -> bool:
        return bool(getattr(self, backend))


@dataclass(frozen=True)
class Operand:
    """One tensor argument: its shape, strides (elements), storage offset (elements) and dtype name."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    itemsize: int
    storage_offset: int = 0
    requires_grad: bool = False


@dataclass(frozen=True)
class Call:
    """One `scaled_dot_product_attention` call as the backend choice sees it (`sdp_params`)."""

    query: Operand
    key: Operand
    value: Operand
    attn_mask: Operand | None = None
    dropout_p: float = 0.0
    is_causal: bool = False
    enable_gqa: bool = False
    grad_mode: bool = True

    @property
    def requires_grad(self) -> bool:
        """`input_requires_grad`: any of q, k, v requires grad and grad mode is on."""
        return self.grad_mode and any(t.requires_grad for t in (self.query, self.key, self.value))


@dataclass(frozen=True)
class Choice:
    backend: str  # flash | efficient | cudnn | math | error
    rejected: dict[str, str] = field(default_factory=dict)  # backend -> the first filter that failed
    order: tuple[str, ...] = DEFAULT_PRIORITY


Check = Callable[[Call, Gpu, Flags], "str | None"]


# --- priority -----------------------------------------------------------------------------------------


def prefer_cudnn(gpu: Gpu) -> bool:
    """`check_prefer_cudnn_attention`: cuDNN > 9.15.0 on sm 9.x/10.x (CUDA < 13: minor 0 or 3 only).

    TORCH_CUDNN_SDPA_DEPRIORITIZED=1 in the environment turns it off; callers pass that as the cuDNN switch.
    """
    if not (gpu.cudnn_version > 91500 and gpu.major in (9, 10)):
        return False
    if _cuda_major(gpu.cuda_version) < 13:
        return gpu.minor in (0, 3)
    return True


def _cuda_major(version: str) -> int:
    return int(version.split(".")[0])


def priority(gpu: Gpu, flags: Flags) -> tuple[str, ...]:
    """`priority_order`: the default order becomes cudnn, flash, efficient, math when cuDNN is preferred."""
    if flags.priority == DEFAULT_PRIORITY and prefer_cudnn(gpu):
        return ("cudnn", "flash", "efficient", "math")
    return flags.priority


# --- filters shared by the backends (sdp_utils_cpp.h) ----------------------------------------------------


def check_tensor_shapes(c: Call, g: Gpu, f: Flags) -> str | None:
    dims = {len(c.query.shape), len(c.key.shape), len(c.value.shape)}
    return None if dims == {4} else "check_tensor_shapes: query, key and value must be 4-dimensional"


def check_for_attn_mask(c: Call, g: Gpu, f: Flags) -> str | None:
    return "check_for_attn_mask: flash attention does not support an attn_mask" if c.attn_mask else None


def check_attn_mask_shape(c: Call, g: Gpu, f: Flags) -> str | None:
    mask = c.attn_mask
    if mask is None:
        return None
    bad = "check_attn_mask_shape: mask must be 2-D or 4-D and broadcast to (B, H, Sq, Sk)"
    if mask.requires_grad:
        return "check_attn_mask_shape: attn_mask requires grad"
    b, h, sq, _ = c.query.shape
    sk = c.key.shape[2]
    if mask.shape[-2] not in (sq, 1) or mask.shape[-1] not in (sk, 1):
        return bad
    if len(mask.shape) == 2:
        return None
    if len(mask.shape) == 4 and mask.shape[0] in (1, b) and mask.shape[1] in (1, h):
        return None
    return bad


def check_nonzero_sequence_lengths_dense(c: Call, g: Gpu, f: Flags) -> str | None:
    if c.query.shape[-2] == 0 or c.key.shape[-2] == 0:
        return "check_nonzero_sequence_lengths_dense: zero seq_len_q or seq_len_kv"
    return None


def last_dim_stride_1(ignore_singleton_dim: bool) -> Check:
    def check_last_dim_stride_equals_1_dense(c: Call, g: Gpu, f: Flags) -> str | None:
        ok = all(t.stride[-1] == 1 for t in (c.query, c.key, c.value))
        ok = ok or (ignore_singleton_dim and c.query.shape[-1] == 1)
        mask_ok = c.attn_mask is None or c.attn_mask.stride[-1] == 1
        if ok and mask_ok:
            return None
        return "check_last_dim_stride_equals_1_dense: q, k, v and attn_mask need stride 1 in the last dim"

    return check_last_dim_stride_equals_1_dense


def batch_and_heads(
    supports_gqa: bool, requires_same_num_heads: bool = True, gqa_since: tuple[int, int] = (2, 5)
) -> Check:
    """`gqa_since`: the first PyTorch whose backend takes `enable_gqa` here."""

    def check_batch_size_and_num_heads_dense(c: Call, g: Gpu, f: Flags) -> str | None:
        (qb, qh), (kb, kh), (vb, vh) = (c.query.shape[:2], c.key.shape[:2], c.value.shape[:2])
        if not qb == kb == vb:
            return "check_batch_size_and_num_heads_dense: q, k, v need the same batch size"
        if c.enable_gqa and supports_gqa and g.torch_version >= gqa_since:
            return _grouped_query(qh, kh, vh, requires_same_num_heads)
        if not qh == kh == vh:
            return "check_batch_size_and_num_heads_dense: q, k, v need the same num_heads (enable_gqa off)"
        return None

    return check_batch_size_and_num_heads_dense


def _grouped_query(qh: int, kh: int, vh: int, requires_same_num_heads: bool) -> str | None:
    """`check_grouped_query_attention<requires_same_num_heads>`."""
    if requires_same_num_heads and kh != vh:
        return "check_grouped_query_attention: key and value need the same num_heads"
    if qh % kh != 0 or (not requires_same_num_heads and qh % vh != 0):
        return "check_grouped_query_attention: kv heads must divide query heads"
    return None


def dtypes(allowed: Sequence[str], name: str) -> Check:
    def check_tensor_dtype(c: Call, g: Gpu, f: Flags) -> str | None:
        d = c.query.dtype
        if d == c.key.dtype == c.value.dtype and d in allowed:
            return None
        return f"{name}: q, k, v must all be one of {{{', '.join(allowed)}}}, got {d}"

    return check_tensor_dtype


def runtime_enabled(backend: str) -> Check:
    def check_runtime_disabled(c: Call, g: Gpu, f: Flags) -> str | None:
        return None if f.enabled(backend) else f"check_runtime_disabled_{backend}: disabled by the flags"

    return check_runtime_disabled


# --- flash (can_use_flash_attention) ----------------------------------------------------------------------


def check_head_dim_size_flash(c: Call, g: Gpu, f: Flags) -> str | None:
    dq, dk, dv = c.query.shape[-1], c.key.shape[-1], c.value.shape[-1]
    if dq == dk == dv and dq <= 256:
        return None
    return f"check_head_dim_size_flash: q, k, v head dims must be equal and <= 256, got {dq}/{dk}/{dv}"


def check_flash_attention_hardware_support(c: Call, g: Gpu, f: Flags) -> str | None:
    if g.in_range((8, 0), (12, 1)):
        return None
    return f"check_flash_attention_hardware_support: needs sm80..sm121, got sm{g.compute_capability}"


def check_requires_grad_and_head_dim_gt192(c: Call, g: Gpu, f: Flags) -> str | None:
    """`check_requires_grad_and_head_dim_gt192_constraints_on_sm86_89_or_120`."""
    small_smem = g.in_range((8, 6), (8, 9)) or g.in_range((12, 0), (12, 1))
    if not (c.requires_grad and small_smem):
        return None
    hd = c.query.shape[-1]
    if hd <= 192 or (c.dropout_p == 0.0 and hd > 224):
        return None
    return (
        "check_requires_grad_and_head_dim_gt192: training with head_dim in (192, 224] (or > 224 with dropout)"
    )


def check_flash_causal_non_square_seqlens(c: Call, g: Gpu, f: Flags) -> str | None:
    if c.is_causal and c.query.shape[-2] != c.key.shape[-2]:
        return "check_flash_causal_non_square_seqlens: is_causal with seqlen_q != seqlen_k"
    return None


def check_dtypes_flash_attention(c: Call, g: Gpu, f: Flags) -> str | None:
    if g.major >= 9 and f.fa3:
        return dtypes(("float8_e4m3fn", *_HALF), "check_dtypes_flash_attention")(c, g, f)
    return check_dtypes_low_precision(c, g, f)


def check_dtypes_low_precision(c: Call, g: Gpu, f: Flags) -> str | None:
    allowed = _HALF if g.major >= 8 else ("float16",)
    return dtypes(allowed, "check_dtypes_low_precision")(c, g, f)


FLASH_CHECKS: tuple[Check, ...] = (
    runtime_enabled("flash"),
    check_tensor_shapes,
    check_for_attn_mask,
    check_head_dim_size_flash,
    check_flash_attention_hardware_support,
    check_requires_grad_and_head_dim_gt192,
    check_flash_causal_non_square_seqlens,
    check_dtypes_flash_attention,
)
FLASH_DENSE: tuple[Check, ...] = (
    batch_and_heads(supports_gqa=True),
    check_nonzero_sequence_lengths_dense,
    last_dim_stride_1(ignore_singleton_dim=True),
)


# --- memory-efficient (can_use_mem_efficient_attention) --------------------------------------------------


def minimum_gemm_alignment(c: Call, g: Gpu) -> int:
    """`minimum_gemm_alignment`: elements the CUTLASS GEMMs need the head dim aligned to."""
    is_half = c.query.dtype in _HALF
    use_tc = g.major >= 8 or (g.major >= 7 and is_half)
    align = 4 if g.major >= 8 else 1
    return max(align, 128 // (16 if is_half else 32)) if use_tc else align


def check_mem_efficient_hardware_support(c: Call, g: Gpu, f: Flags) -> str | None:
    if g.in_range((5, 0), (12, 1)):
        return None
    return f"check_mem_efficient_hardware_support: needs sm50..sm121, got sm{g.compute_capability}"


def check_head_dim_size_mem_efficient(c: Call, g: Gpu, f: Flags) -> str | None:
    dq, dk, dv = c.query.shape[-1], c.key.shape[-1], c.value.shape[-1]
    a = minimum_gemm_alignment(c, g)
    if dq == dk and dq % a == 0 and dq > 0 and dv % a == 0 and dv > 0:
        return None
    return f"check_head_dim_size_mem_efficient: head dims must be divisible by {a}, got {dq}/{dk}/{dv}"


def check_data_ptr_alignment_mem_efficient(c: Call, g: Gpu, f: Flags) -> str | None:
    if g.major < 8:
        return None
    align_bytes = minimum_gemm_alignment(c, g) * c.query.itemsize
    for t in (c.query, c.key, c.value):
        empty = math.prod(t.shape) == 0
        if not empty and (t.storage_offset * t.itemsize) % align_bytes != 0:
            return (
                f"check_data_ptr_alignment_mem_efficient: storage offsets must align to {align_bytes} bytes"
            )
    return None


def check_dtypes_mem_efficient(c: Call, g: Gpu, f: Flags) -> str | None:
    allowed = ("float16", "float32", "bfloat16") if g.major >= 8 else ("float16", "float32")
    return dtypes(allowed, "check_tensor_dtype(mem_efficient)")(c, g, f)


EFFICIENT_CHECKS: tuple[Check, ...] = (
    runtime_enabled("efficient"),
    check_mem_efficient_hardware_support,
    check_tensor_shapes,
    check_head_dim_size_mem_efficient,
    check_data_ptr_alignment_mem_efficient,
)
EFFICIENT_DENSE: tuple[Check, ...] = (
    check_nonzero_sequence_lengths_dense,
    last_dim_stride_1(ignore_singleton_dim=False),
    batch_and_heads(supports_gqa=True, gqa_since=RULES_SINCE),
    check_dtypes_mem_efficient,
)


# --- cuDNN (can_use_cudnn_attention) -------------------------------------------------------------------


def check_cudnn_dropout_versions(c: Call, g: Gpu, f: Flags) -> str | None:
    """The static check at the top of `can_use_cudnn_attention`: no dropout on cuDNN 9.11-9.13."""
    if g.cudnn_version < 90000:
        return "can_use_cudnn_attention: cuDNN older than 9.0.0"
    if c.dropout_p > 0.0 and 91100 < g.cudnn_version < 91400:
        return "can_use_cudnn_attention: cuDNN 9.11-9.13 does not support dropout in SDPA"
    return None


def check_cudnn_deterministic(c: Call, g: Gpu, f: Flags) -> str | None:
    if f.deterministic and not f.deterministic_warn_only:
        return "check_cudnn_deterministic: cuDNN SDPA is not deterministic"
    return None


def check_cudnn_hardware_support(c: Call, g: Gpu, f: Flags) -> str | None:
    if g.in_range((8, 0), (12, 1)):
        return None
    return f"check_cudnn_hardware_support: needs sm80..sm121, got sm{g.compute_capability}"


def check_cudnn_dropout(c: Call, g: Gpu, f: Flags) -> str | None:
    if g.torch_version < RULES_SINCE or c.dropout_p * 16.0 == math.floor(c.dropout_p * 16.0):
        return None
    return "check_cudnn_dropout: dropout must be a multiple of 1/16"


def _sm90_or_sm10x(g: Gpu) -> bool:
    return (g.major == 9 and g.minor == 0) or g.major == 10


def _cudnn_d256(g: Gpu) -> bool:
    unsupported_sm107 = g.major == 10 and g.minor == 7 and g.cudnn_version <= 92500
    return _sm90_or_sm10x(g) and not unsupported_sm107 and g.cudnn_version > 92200 and g.cudnn_frontend_d256


def cudnn_head_dim_limit(c: Call, g: Gpu) -> int:
    d_qk, d_v = c.query.shape[3], c.value.shape[3]
    if _cudnn_d256(g) or (g.torch_version < RULES_SINCE and _sm90_or_sm10x(g)):
        return 256
    if _sm90_or_sm10x(g) and g.cudnn_version >= 91100 and d_qk == 192 and d_v == 128:
        return 192
    return 128


def check_cudnn_tensor_shapes(c: Call, g: Gpu, f: Flags) -> str | None:
    b, h, s_q, d_qk = c.query.shape
    s_k, d_v = c.key.shape[2], c.value.shape[3]
    limit = cudnn_head_dim_limit(c, g)
    rules: tuple[tuple[bool, str], ...] = (
        (b > 65535 or h > 65535, "batch size or num_heads > 65535"),
        (g.cudnn_version < 8903, "SDPA fprop requires cuDNN 8.9.3"),
        (g.cudnn_version < 8906 and c.dropout_p != 0.0, "dropout needs cuDNN 8.9.6"),
        (d_qk > limit or d_v > limit, f"head_dim should be no more than {limit}"),
        (d_qk % 8 != 0 or d_v % 8 != 0, "head_dim should be a multiple of 8"),
        (g.cudnn_version < 8906 and s_k % 64 != 0, "seq_kv not a multiple of 64 below cuDNN 8.9.6"),
        (g.cudnn_version < 90000 and s_q < 64, "s_q < 64 before cuDNN 9.0.0"),
        (s_k == 1, "key/value sequence length 1"),
        (c.dropout_p != 0.0 and s_q == 1, "query sequence length 1 with dropout"),
    )
    for failed, why in rules:
        if failed:
            return f"check_cudnn_tensor_shapes: {why}"
    return None


def check_cudnn_d256_bprop_head_dim(c: Call, g: Gpu, f: Flags) -> str | None:
    if not c.requires_grad or not _cudnn_d256(g):
        return None
    d_qk, d_v = c.query.shape[3], c.value.shape[3]
    if (d_qk <= 128 and d_v <= 128) or (d_qk, d_v) in ((192, 128), (256, 256)):
        return None
    return f"check_cudnn_d256_bprop_head_dim: no backward for d_qk={d_qk}, d_v={d_v} on sm9.0/10.x"


CUDNN_CHECKS: tuple[Check, ...] = (
    check_cudnn_dropout_versions,
    runtime_enabled("cudnn"),
    check_tensor_shapes,
    check_cudnn_deterministic,
    check_dtypes_low_precision,
    check_attn_mask_shape,
    check_cudnn_hardware_support,
    check_cudnn_dropout,
)
CUDNN_DENSE: tuple[Check, ...] = (
    check_nonzero_sequence_lengths_dense,
    last_dim_stride_1(ignore_singleton_dim=True),
    batch_and_heads(supports_gqa=True, requires_same_num_heads=False),
    check_cudnn_tensor_shapes,
    check_cudnn_d256_bprop_head_dim,
)

CHECKS: dict[str, tuple[Check, ...]] = {
    "flash": FLASH_CHECKS + FLASH_DENSE,
    "efficient": EFFICIENT_CHECKS + EFFICIENT_DENSE,
    "cudnn": CUDNN_CHECKS + CUDNN_DENSE,
}


# --- the choice ----------------------------------------------------------------------------------------


def why_not(backend: str, call: Call, gpu: Gpu, flags: Flags) -> str | None:
    """The first filter of `backend` that rejects `call` (None: it can run)."""
    if backend == "math":
        return None if flags.math else "math has been disabled by the flags"
    for check in CHECKS[backend]:
        reason = check(call, gpu, flags)
        if reason is not None:
            return reason
    return None


def choose(call: Call, gpu: Gpu | None = None, flags: Flags | None = None) -> Choice:
    """`select_sdp_backend`: the first backend in priority order whose filters all pass."""
    gpu = gpu or Gpu()
    flags = flags or Flags()
    order = priority(gpu, flags)
    rejected: dict[str, str] = {}
    if not (flags.math or flags.flash or flags.efficient or flags.cudnn):
        return Choice("error", {b: "every backend is disabled" for b in BACKENDS}, order)
    for backend in order:
        reason = why_not(backend, call, gpu, flags)
        if reason is None:
            return Choice(backend, rejected, order)
        rejected[backend] = reason
    return Choice("error", rejected, order)
