"""Scaled dot-product attention as a CUDA GPU runs it: the backend PyTorch picks, its saved tensors, and the
temporaries its kernels allocate.

On meta, `F.scaled_dot_product_attention` takes the math path (bmm, softmax, bmm) and saves the attention
matrices. On a GPU, `select_sdp_backend` (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp, ported in
`sdp_choice`) picks flash, memory-efficient or cuDNN attention, which save q, k, v, the output and a
logsumexp. The patch below asks that port for the target GPU (`target(...)`) and calls the chosen backend's
aten op on meta, as `scaled_dot_product_attention` in aten/src/ATen/native/transformers/attention.cpp does
(head dim padded to a multiple of 8 for flash, boolean masks made additive, the efficient kernel's mask
expanded and padded to 16). Those ops are autograd ops: their backward is the matching `*_backward` op,
whose meta kernel gives dq, dk, dv; the kernels' own temporaries are the workspace rules below.

Workspace rules (sizes from PyTorch's CUDA source, read at the commits cited in `sdp_choice`):
- flash forward, `mha_fwd` in aten/src/ATen/native/transformers/cuda/flash_attn/flash_api.cpp (commit
  03b7c19d): with no dropout, `set_params_splitkv` may split the keys (`num_splits_heuristic`, from the SM
  count) and then holds `softmax_lse_accum` {splits, B, H, Sq} and `out_accum` {splits, B, H, Sq, d_rounded}
  in fp32 for the kernel's duration.
- flash backward, `_flash_attention_backward` (attention_backward.cu, commit 00afd8f2) makes grad_out and
  out contiguous in (B, S, H, D), then `mha_bwd` (flash_api.cpp) allocates dq, dk, dv, `softmax_d`
  {B, H, round128(Sq)} fp32 and `dq_accum` {B, round128(Sq), H, round(d, 32 if d <= 128 else 64)} fp32
  ({nsplits, ...} zeroed in deterministic mode), and for MQA/GQA `dk_expanded`/`dv_expanded`
  {B, Sk, H, d} before summing them into dk, dv.
- efficient backward, `_efficient_attention_backward` (attention_backward.cu): grad_out made contiguous,
  grad_q/k/v, `delta` {B, H, M} fp32 when the kernel computes it (else fp32 products of grad_out and out),
  and the kernel's `workspace_size()` (mem_eff_attention/kernel_backward.h as shipped in the torch 2.13
  wheel: grad-Q accumulation tiles, and grad-K/V tiles for kernels that do not keep the output in
  registers). The CUTLASS kernel (tile sizes) is chosen from cutlassB.h by dtype, head dim and shared
  memory; `efficient_backward_tile` follows that list for sm80+ and is an estimate below sm80.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ...core.registry import Workspace, patch, rule
from ..shared import SdpaCall, installed_torch, meta_sdpa, sdpa_replaced
from .sdp_choice import (
    DEFAULT_COMPUTE_CAPABILITY,
    DEFAULT_CUDA_VERSION,
    DEFAULT_CUDNN_VERSION,
    Call,
    Choice,
    Flags,
    Gpu,
    Operand,
    choose,
)

BACKEND_CHOICES = ("auto", "flash", "efficient", "cudnn", "math")

# Streaming multiprocessors per compute capability, for flash's split-KV heuristic and deterministic
# dq_accum: the SXM/flagship part of each generation (A100 108, H100 SXM 132, B200 148). An estimate
# where one capability covers several parts (sm86: RTX 3090 82, A10 72).
SM_COUNTS = {"7.0": 80, "7.5": 40, "8.0": 108, "8.6": 82, "8.7": 16, "8.9": 128, "9.0": 132, "10.0": 148}
DEFAULT_SM_COUNT = 108

_ATEN: Any = torch.ops.aten
_PRIORITY_NAMES = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn"}  # at::SDPBackend


@dataclass
class ChoiceRecord:
    """One SDPA call's backend, why the others were rejected, and its shapes."""

    backend: str
    rejected: dict[str, str]
    query_shape: tuple[int, ...]
    key_shape: tuple[int, ...]
    dtype: str


@dataclass
class Target:
    """The GPU the simulation is for, the `--sdpa-backend` default, and the choices made under it."""

    gpu: Gpu = field(default_factory=Gpu)
    backend: str = "auto"
    sm_count: int = DEFAULT_SM_COUNT
    choices: list[ChoiceRecord] = field(default_factory=list)
    # what other rules state as a range (cuDNN's RNN spaces): call key -> (what, cause, extra bytes above
    # what was placed); one entry per key however often the step runs the call (`gpu.stated_ranges`)
    ranges: dict[object, tuple[str, str, int]] = field(default_factory=dict)
    # what other rules say of how the step ran on this GPU (what they simulated instead), each line once
    notes: dict[str, None] = field(default_factory=dict)

    def note(self, text: str) -> None:
        self.notes.setdefault(text, None)

    def summary(self) -> dict[str, int]:
        """How many SDPA calls ran on each backend."""
        counts: dict[str, int] = {}
        for c in self.choices:
            counts[c.backend] = counts.get(c.backend, 0) + 1
        return counts


_DEFAULT = Target()
_STACK: list[Target] = []


def current() -> Target:
    """The innermost `target(...)`, or the stated default (A100 sm80, cuDNN 9.10.2, CUDA 12.8)."""
    return _STACK[-1] if _STACK else _DEFAULT


@contextlib.contextmanager
def target(
    compute_capability: str = DEFAULT_COMPUTE_CAPABILITY,
    cudnn_version: int | None = None,
    backend: str = "auto",
    *,
    cuda_version: str = DEFAULT_CUDA_VERSION,
    sm_count: int | None = None,
) -> Iterator[Target]:
    """Simulate SDPA for this GPU. `backend` is `--sdpa-backend`: `auto` lets PyTorch's rules choose; a
    named backend is the only one enabled (as `sdpa_kernel([that])`), and a user's `sdpa_kernel` block
    restricts further inside it. `cudnn_version` is cuDNN's integer version (91002 for 9.10.2; default
    `DEFAULT_CUDNN_VERSION`). Yields the Target, whose `choices` lists every call's backend.
    """
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"unknown SDPA backend {backend!r} ({', '.join(BACKEND_CHOICES)})")
    gpu = Gpu(
        compute_capability,
        cudnn_version or DEFAULT_CUDNN_VERSION,
        cuda_version,
        torch_version=installed_torch(),
    )
    sms = sm_count or SM_COUNTS.get(compute_capability, DEFAULT_SM_COUNT)
    t = Target(gpu, backend, sms)
    _STACK.append(t)
    try:
        yield t
    finally:
        _STACK.remove(t)


def choices() -> list[ChoiceRecord]:
    """The backends chosen so far under the current target (the default target's when none is set)."""
    return current().choices


# --- the inputs of the choice -----------------------------------------------------------------------------


def runtime_flags(backend: str = "auto") -> Flags:
    """The global SDPA switches as `sdpa_kernel` / `torch.backends.cuda.enable_*_sdp` left them (readable
    on a CPU build), narrowed to `backend` when it is not `auto`."""
    cuda: Any = torch.backends.cuda
    on = {
        "flash": cuda.flash_sdp_enabled(),
        "efficient": cuda.mem_efficient_sdp_enabled(),
        "math": cuda.math_sdp_enabled(),
        "cudnn": cuda.cudnn_sdp_enabled(),
    }
    if backend != "auto":
        on = {name: enabled and name == backend for name, enabled in on.items()}
    order = tuple(_PRIORITY_NAMES[i] for i in torch._C._get_sdp_priority_order() if i in _PRIORITY_NAMES)
    return Flags(
        priority=order,
        deterministic=torch.are_deterministic_algorithms_enabled(),
        deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
        **on,
    )


def operand(t: torch.Tensor) -> Operand:
    dtype = str(t.dtype).removeprefix("torch.")
    return Operand(
        tuple(t.shape), tuple(t.stride()), dtype, t.element_size(), int(t.storage_offset()), t.requires_grad
    )


def describe(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Any,
    dropout_p: float,
    is_causal: bool,
    enable_gqa: bool,
) -> Call:
    m = operand(mask) if isinstance(mask, torch.Tensor) else None
    return Call(
        operand(q), operand(k), operand(v), m, dropout_p, is_causal, enable_gqa, torch.is_grad_enabled()
    )


def decide(call: Call, t: Target) -> Choice:
    return choose(call, t.gpu, runtime_flags(t.backend))


# --- the backends, as attention.cpp calls them ----------------------------------------------------------


def additive_mask(mask: Any, dtype: torch.dtype) -> Any:
    """`convert_boolean_attn_mask`: a boolean mask becomes 0 / -inf in the query's dtype."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        return mask
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask.logical_not(), -math.inf)


def efficient_mask(mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """`preprocess_mask`: expand to (B, H, Sq, Sk); pad the last dim to 16 or make it contiguous."""
    m = mask.expand(q.size(0), q.size(1), q.size(2), k.size(2))
    last = m.size(-1)
    if last % 16 != 0:
        return F.pad(m, (0, 16 - last % 16))[..., :last]
    if m.stride(0) % 16 or m.stride(1) % 16 or m.stride(2) % 16:
        return m.contiguous()
    return m


def run_flash(c: SdpaCall) -> torch.Tensor:
    """attention.cpp's flash case: pad the head dim to a multiple of 8, scale from the original size."""
    q, k, v, dropout_p, is_causal, scale = c.query, c.key, c.value, c.dropout_p, c.is_causal, c.scale
    og = q.size(-1)
    og_scale = scale if scale is not None else 1.0 / math.sqrt(og)
    if og % 8:
        q, k, v = (F.pad(t, (0, 8 - og % 8)) for t in (q, k, v))
    out = _ATEN._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, False, scale=og_scale)
    result: torch.Tensor = out[0][..., :og] if og % 8 else out[0]
    return result


def run_efficient(c: SdpaCall) -> torch.Tensor:
    """attention.cpp's efficient case: an additive mask padded as `preprocess_mask` does."""
    q, k, v, dropout_p, is_causal, scale = c.query, c.key, c.value, c.dropout_p, c.is_causal, c.scale
    mask = additive_mask(c.attn_mask, q.dtype)
    if isinstance(mask, torch.Tensor):
        mask = efficient_mask(mask, q, k)
    if k.size(1) != q.size(1):  # GQA: assumed expanded to the query heads (a fact to confirm on a GPU)
        k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
        v = v.repeat_interleave(q.size(1) // v.size(1), dim=1)
    lse = _needs_logsumexp(q, k, v)
    out = _ATEN._scaled_dot_product_efficient_attention(q, k, v, mask, lse, dropout_p, is_causal, scale=scale)
    result: torch.Tensor = out[0]
    return result


def run_cudnn(c: SdpaCall) -> torch.Tensor:
    """attention.cpp's cuDNN case."""
    q, k, v, dropout_p, is_causal, scale = c.query, c.key, c.value, c.dropout_p, c.is_causal, c.scale
    mask = additive_mask(c.attn_mask, q.dtype)
    lse = _needs_logsumexp(q, k, v)
    out = _ATEN._scaled_dot_product_cudnn_attention(
        q, k, v, mask, lse, dropout_p, is_causal, False, scale=scale
    )
    result: torch.Tensor = out[0]
    return result


def _needs_logsumexp(*ts: torch.Tensor) -> bool:
    """`should_compute_logsumexp`."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def _cuda_kernel(c: SdpaCall) -> torch.Tensor:
    """The backend PyTorch would choose on the target GPU, recorded, then run on meta."""
    t = current()
    choice = decide(describe(c.query, c.key, c.value, c.attn_mask, c.dropout_p, c.is_causal, c.enable_gqa), t)
    t.choices.append(
        ChoiceRecord(
            choice.backend,
            choice.rejected,
            tuple(c.query.shape),
            tuple(c.key.shape),
            str(c.query.dtype).removeprefix("torch."),
        )
    )
    if choice.backend == "flash":
        return run_flash(c)
    if choice.backend == "efficient":
        return run_efficient(c)
    if choice.backend == "cudnn":
        return run_cudnn(c)
    if choice.backend == "error":
        raise RuntimeError(f"No available kernel. Aborting execution. Rejected: {choice.rejected}")
    return c.fallback()


@patch("cuda", "sdpa")
def cuda_sdpa() -> AbstractContextManager[None]:
    return sdpa_replaced(meta_sdpa("cuda", _cuda_kernel))


# --- flash: the kernels' temporaries (flash_api.cpp) -----------------------------------------------------


def round_multiple(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def head_size_rounded(d: int) -> int:
    """`head_size_rounded` in mha_fwd / mha_bwd."""
    return round_multiple(d, 32 if d <= 128 else 64)


def num_splits_heuristic(batch_nheads_mblocks: int, num_sms: int, num_n_blocks: int, max_splits: int) -> int:
    """flash_api.cpp `num_splits_heuristic`."""
    if batch_nheads_mblocks >= 0.8 * num_sms:
        return 1
    max_splits = min(max_splits, num_sms, num_n_blocks)
    eff = [0.0] * (max_splits + 1)

    def eligible(n: int) -> bool:
        return n == 1 or -(-num_n_blocks // n) != -(-num_n_blocks // (n - 1))

    for n in range(1, max_splits + 1):
        if eligible(n):
            waves = batch_nheads_mblocks * n / num_sms
            eff[n] = waves / math.ceil(waves)
    best = max(eff)
    for n in range(1, max_splits + 1):
        if eligible(n) and eff[n] >= 0.85 * best:
            return n
    return 1


def flash_forward_splits(
    b: int, h: int, hk: int, sq: int, sk: int, d: int, dropout_p: float, sms: int
) -> int:
    """The split count `mha_fwd` passes to `set_params_splitkv` (num_splits=0: the heuristic)."""
    if dropout_p > 0.0:
        return 1
    if sq == 1 and h > hk:  # seqlenq_ngroups_swapped
        sq, h = h // hk, hk
    d = round_multiple(d, 8)
    block_n = 256 if d <= 64 else (128 if d <= 128 else 64)
    return num_splits_heuristic(b * h * -(-sq // 64), sms * 2, -(-sk // block_n), 128)


@rule("cuda", _ATEN._scaled_dot_product_flash_attention.default)
def flash_forward(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    q, k = args[0], args[1]
    dropout_p = float(args[3]) if len(args) > 3 else float(kwargs.get("dropout_p", 0.0))
    b, h, sq, d = q.shape
    hk, sk = k.shape[1], k.shape[2]
    splits = flash_forward_splits(b, h, hk, sq, sk, d, dropout_p, current().sm_count)
    if splits <= 1:
        return None
    if sq == 1 and h > hk:
        sq, h = h // hk, hk
    ws = Workspace()
    ws.outputs()
    ws.alloc(splits * b * h * sq * 4)  # softmax_lse_accum
    ws.alloc(splits * b * h * sq * head_size_rounded(round_multiple(d, 8)) * 4)  # out_accum
    return ws


def flash_backward_sizes(
    q: Any, k: Any, deterministic: bool = False, sms: int = DEFAULT_SM_COUNT
) -> dict[str, int]:
    """Bytes of mha_bwd's own buffers for q (B, H, Sq, d) and k (B, Hk, Sk, d) as the op receives them."""
    b, h, sq, d = q.shape
    hk, sk = k.shape[1], k.shape[2]
    sq_r = round_multiple(sq, 128)
    nsplits = -(-sms // (b * h)) if deterministic else 1
    sizes = {
        "softmax_d": b * h * sq_r * 4,
        "dq_accum": nsplits * b * sq_r * h * head_size_rounded(d) * 4,
    }
    if hk != h:
        sizes["dk_expanded"] = sizes["dv_expanded"] = b * sk * h * d * q.element_size()
    return sizes


def _contiguous_copy(t: Any) -> int:
    """Bytes `.contiguous()` copies for the (B, S, H, D) view of a (B, H, S, D) tensor (0 when it is one)."""
    return 0 if t.transpose(1, 2).is_contiguous() else t.numel() * t.element_size()


def _strict_deterministic() -> bool:
    return (
        torch.are_deterministic_algorithms_enabled()
        and not torch.is_deterministic_algorithms_warn_only_enabled()
    )


@rule("cuda", _ATEN._scaled_dot_product_flash_attention_backward.default)
def flash_backward(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    grad_out, q, k, o = args[0], args[1], args[2], args[4]
    ws = Workspace()
    ws.alloc(_contiguous_copy(grad_out))  # _flash_attention_backward: grad_out.contiguous()
    ws.alloc(_contiguous_copy(o))  # out.contiguous()
    ws.outputs()  # mha_bwd: dq, dk, dv
    for nbytes in flash_backward_sizes(q, k, _strict_deterministic(), current().sm_count).values():
        ws.alloc(nbytes)
    return ws


# --- cuDNN (MHA.cpp run_cudnn_SDP_fprop / run_cudnn_SDP_bprop) -----------------------------------------
# cuDNN's execution-plan workspaces are the library's choice, not PyTorch's; these sizes were measured on
# an H200 (sm90, cuDNN 9.19, torch 2.11.0+cu130) from memory snapshots of one SDPA training step each:
# (1, 32, 4096, 128) bf16 causal, the same with 8 kv heads, and (1, 8, 2048, 64) bf16 with a boolean mask
# (benchmarks/results/h200-torch2.11). The forward's workspace was 256 bytes; the backward's was the fp32
# grad-Q accumulator, an fp32 row statistic and 256 bytes, plus grad K and V at the query's head count when
# kv heads are grouped.
CUDNN_FPROP_WORKSPACE = 256


def cudnn_backward_workspace(q: Any, k: Any) -> int:
    """Bytes of run_cudnn_SDP_bprop's workspace for q (B, H, Sq, D) and k (B, Hk, Sk, D)."""
    b, h, sq, d = q.shape
    hk, sk = k.shape[1], k.shape[2]
    nbytes = b * h * sq * d * 4 + b * h * sq * 4 + 256
    if hk != h:
        nbytes += 2 * b * h * sk * k.shape[3] * k.element_size()
    return int(nbytes)


@rule("cuda", _ATEN._scaled_dot_product_cudnn_attention.default)
def cudnn_forward(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    ws = Workspace()
    ws.outputs()
    ws.alloc(CUDNN_FPROP_WORKSPACE)
    return ws


@rule("cuda", _ATEN._scaled_dot_product_cudnn_attention_backward.default)
def cudnn_backward(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    """dq, dk, dv; then `permute_to_matching_layout` copies grad_out unless it has the output's strides;
    then the plan's workspace; both are freed before the op returns."""
    grad_out, q, k, o = args[0], args[1], args[2], args[4]
    ws = Workspace()
    ws.outputs()
    copies = tuple(grad_out.stride()) != tuple(o.stride())
    copy = ws.alloc(grad_out.numel() * grad_out.element_size()) if copies else None
    ws.free(ws.alloc(cudnn_backward_workspace(q, k)))
    if copy is not None:
        ws.free(copy)
    return ws


# --- memory-efficient backward (attention_backward.cu, kernel_backward.h) ---------------------------------


@dataclass(frozen=True)
class Tile:
    block_i: int
    block_j: int
    max_k: int


def _big_smem(cc: str) -> bool:
    """GPUs whose opt-in shared memory fits the 128x128 backward tiles (sm80/87/90/100: >= 163 KB)."""
    return cc in ("8.0", "8.7", "9.0") or cc.startswith("10.")


def efficient_backward_tile(cc: str, max_k: int, dropout: bool) -> Tile:
    """The first kernel of cutlassB.h's sm80 list (bf16/f16) that fits head dim, dropout and shared memory."""
    big = _big_smem(cc)
    if max_k <= 32:
        return Tile(64, 64, 32)
    if max_k <= 64:
        return Tile(64, 64, 64)
    if max_k <= 96 and cc in ("8.6", "8.9") and not dropout:
        return Tile(128, 64, 96)
    if max_k <= 128:
        return Tile(128, 128, 128) if big else Tile(64, 64, 128)
    return Tile(128, 64, 65536) if big else Tile(64, 64, 65536)


def efficient_backward_sizes(q: Any, k: Any, v: Any, dropout_p: float, cc: str) -> dict[str, int]:
    """Bytes of `_efficient_attention_backward`'s delta and kernel workspace for q, k, v in (B, H, S, D)."""
    b, h, m, kq = q.shape
    n, kv = k.shape[2], v.shape[3]
    is_half = q.element_size() == 2
    tile = efficient_backward_tile(cc, max(kq, kv), dropout_p > 0)
    output_in_rf = is_half and tile.max_k <= tile.block_i
    arch = _kernel_arch(cc)
    computes_delta = is_half and (output_in_rf or arch != 70)
    sizes: dict[str, int] = {}
    if computes_delta:
        sizes["delta"] = b * h * m * 4
    else:  # (grad_out.to(float) * out.to(float)).sum(-1).transpose(-2, -1).contiguous()
        if is_half:
            sizes["grad_out_fp32"] = sizes["out_fp32"] = b * m * h * kv * 4
        sizes["product"] = b * m * h * kv * 4
        sizes["row_sum"] = b * m * h * 4
        sizes["delta"] = b * h * m * 4
    sizes["workspace"] = efficient_workspace(b, h, m, n, kq, kv, tile, is_half and not output_in_rf, arch)
    return sizes


def _kernel_arch(cc: str) -> int:
    """The `ArchTag` of the kernels cutlassB.h dispatches for a compute capability (80, 75, 70, 50)."""
    g = Gpu(cc)
    major_minor = (g.major, g.minor)
    if major_minor >= (8, 0):
        return 80
    if major_minor >= (7, 5):
        return 75
    return 70 if major_minor >= (7, 0) else 50


def efficient_workspace(
    b: int, h: int, m: int, n: int, kq: int, kv: int, tile: Tile, accum_kv: bool, arch: int
) -> int:
    """`Params::workspace_size()`: per (batch, head), grad-K/V accumulators (kernels that do not keep
    the output in registers, fp16/bf16 only) and grad-Q tiles {lock, counter, pad, BI x BJ fp32},
    aligned to 16 bytes."""
    split_keys = arch >= 70
    splits = -(-n // tile.block_j) if split_keys else 1
    if accum_kv:
        splits = max(1, min(splits, 200 // max(1, b * h)))
    gk = splits * tile.block_j * round_multiple(kq, tile.block_i) if accum_kv else 0
    gv = splits * tile.block_j * round_multiple(kv, tile.block_i) if accum_kv else 0
    gq_storage_floats = (16 + tile.block_i * tile.block_j * 4) // 4
    gq = -(-m // tile.block_i) * -(-kq // tile.block_j) * gq_storage_floats if split_keys else 0
    return b * h * round_multiple(gk + gv + gq, 4) * 4


@rule("cuda", _ATEN._scaled_dot_product_efficient_attention_backward.default)
def efficient_backward(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    grad_out, q, k, v = args[0], args[1], args[2], args[3]
    dropout_p = float(args[9]) if len(args) > 9 else float(kwargs.get("dropout_p", 0.0))
    ws = Workspace()
    ws.alloc(_contiguous_copy(grad_out))  # grad_out_.contiguous() in (B, M, H, K)
    ws.outputs()  # grad_q, grad_k, grad_v (and grad_bias)
    sizes = efficient_backward_sizes(q, k, v, dropout_p, current().gpu.compute_capability)
    keys = {name: ws.alloc(nbytes) for name, nbytes in sizes.items() if name != "workspace"}
    for name in _DELTA_TEMPORARIES:  # the expression's temporaries die once delta exists
        if name in keys:
            ws.free(keys[name])
    ws.alloc(sizes["workspace"])
    return ws


_DELTA_TEMPORARIES = ("grad_out_fp32", "out_fp32", "product", "row_sum")
