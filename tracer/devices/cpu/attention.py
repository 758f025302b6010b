"""Scaled dot-product attention as the target device runs it.

On meta, `F.scaled_dot_product_attention` always takes the math path (bmm, softmax, bmm), because the
backend choice is a per-device stub. The CPU picks its fused flash kernel whenever PyTorch's own
`_fused_sdp_choice` says so; this patch asks that same function, on stand-in CPU tensors of the same shapes
that hold one row of memory, and calls the fused kernel on meta when it is chosen.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes

from ...core.registry import Workspace, patch, rule
from ..shared import SdpaCall, meta_sdpa, sdpa_replaced
from . import isa as cpu_isa

aten = torch.ops.aten

_FLASH = 1  # torch.nn.attention.SDPBackend.FLASH_ATTENTION
_CPU = torch.device("cpu")


def _stand_in(t: torch.Tensor | None) -> torch.Tensor | None:
    """A CPU tensor with t's shape, dtype and last-dimension stride whose memory is a single last-dimension
    row. The stride counts: `check_last_dim_stride_equals_1_dense` refuses the flash kernel for a
    transposed query (a U-Net's attention over `(b, heads, c, h*w)` maps), and the math path runs. On the
    CPU whatever the default device: under the parameter probe's `torch.device("meta")` (engine/prepare.py)
    meta stand-ins made PyTorch choose the math path, a 70B probe's costliest part."""
    if t is None:
        return None
    shape = tuple(t.shape)
    if not shape:
        return torch.empty(1, dtype=t.dtype, device=_CPU)[0]
    last = int(t.stride(-1)) if shape[-1] > 1 else 1
    base = torch.empty((shape[-1] - 1) * last + 1, dtype=t.dtype, device=_CPU)
    return base.as_strided(shape, (0,) * (len(shape) - 1) + (last,))


def _cpu_choice(c: SdpaCall) -> int:
    """PyTorch's own CPU backend choice, asked on stand-in CPU tensors of the same shapes."""
    choose: Any = torch._fused_sdp_choice
    with _disable_current_modes():  # the stand-ins are not part of the simulated step
        smask = _stand_in(c.attn_mask) if isinstance(c.attn_mask, torch.Tensor) else None
        try:
            return int(
                choose(
                    _stand_in(c.query),
                    _stand_in(c.key),
                    _stand_in(c.value),
                    smask,
                    c.dropout_p,
                    c.is_causal,
                    scale=c.scale,
                    enable_gqa=c.enable_gqa,
                )
            )
        except (RuntimeError, TypeError):
            return 0


def _cpu_kernel(c: SdpaCall) -> torch.Tensor:
    """The fused flash kernel when PyTorch's CPU choice says so (grouped kv heads included: the kernel
    indexes them), else the math path."""
    if _cpu_choice(c) != _FLASH:
        return c.fallback()
    out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        c.query, c.key, c.value, c.dropout_p, c.is_causal, attn_mask=c.attn_mask, scale=c.scale
    )
    result: torch.Tensor = out[0]
    return result


@patch("cpu", "sdpa")
def cpu_sdpa() -> AbstractContextManager[None]:
    return sdpa_replaced(meta_sdpa("cpu", _cpu_kernel))


# --------------------------------------------------------------------------- the flash kernel's buffers
# aten/src/ATen/native/cpu/FlashAttentionKernel.cpp (PyTorch 2.13): `cpu_flash_attention` books one float
# buffer per thread (scores, row max and sum, the output block) and, for bf16/fp16, a reduced-precision score
# block per thread; the backward two float score blocks per thread, two reduced ones for bf16/fp16, a
# `.contiguous()` copy of a strided grad_out, and a row-sum vector in each thread that gets work. Blocks:
# 256, 64 or 32 query rows (q_len >= 768, >= 192, else) by 512 keys. The K/V packing buffers (fp16 where
# oneDNN packs it: AMX-FP16) are `std::make_unique`, not the CPU allocator's; packing pads the blocks to 64
# columns, which changes the per-thread buffer: derived from the source, unverified (no AMX-FP16 machine).


def _q_split(q_len: int) -> int:
    return 256 if q_len >= 768 else 64 if q_len >= 192 else 32


def _accum_bytes(t: torch.Tensor) -> int:
    return 8 if t.dtype == torch.float64 else 4


def _reduced(t: torch.Tensor) -> bool:
    return t.dtype in (torch.bfloat16, torch.float16)


def _packs(q: torch.Tensor, heads: int, head: int, kv: int, qs: int, kvs: int, causal: bool) -> bool:
    """`need_pack` of `cpu_flash_attention`: fp16 where `cpublas::need_pack(kHalf)` (oneDNN's AMX-FP16), then
    the kernel's own size heuristic. Unverified: derived from the source."""
    if q.dtype != torch.float16 or not cpu_isa.mayiuse("avx512_core_amx_fp16"):
        return False
    if not (heads >= 4 and head % 64 == 0 and kv >= 64):
        return False
    batch, q_len, nthr = int(q.shape[0]), int(q.shape[2]), torch.get_num_threads()
    q_slices = -(-q_len // qs)
    pack = batch * heads * kv * head / 1024
    per_thread = (batch * heads * q_slices + nthr - 1) // nthr * qs * (q_len if causal else kv) * head / 1024
    g = per_thread / pack
    if pack < 2688:
        return g >= 36 or (g >= 24 and head > 64)
    return g >= ((54 if causal else 52) if pack < 16384 else (54 if causal else 40))


def _up(a: int, b: int) -> int:
    return -(-a // b) * b


@rule("cpu", aten._scaled_dot_product_flash_attention_for_cpu.default)
def _flash_forward(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    q, k = args[0], args[1]
    causal = bool(args[4]) if len(args) > 4 else bool(kwargs.get("is_causal", False))
    heads, q_len, head, kv = int(q.shape[1]), int(q.shape[2]), int(q.shape[3]), int(k.shape[2])
    qs, kvs = min(_q_split(q_len), q_len), min(512, kv)
    pack = _packs(q, heads, head, kv, qs, kvs, causal)
    rkvs, rhead = (_up(kvs, 64), _up(head, 64)) if pack else (kvs, head)
    ekvs = kvs + 1 if pack and kvs % 2 else kvs
    nthr = torch.get_num_threads()
    ws = Workspace()
    ws.outputs()
    ws.alloc(nthr * (qs * rkvs + 2 * qs + qs * rhead) * _accum_bytes(q))
    ws.alloc(nthr * qs * ekvs * q.element_size() if _reduced(q) else 0)
    return ws


@rule("cpu", aten._scaled_dot_product_flash_attention_for_cpu_backward.default)
def _flash_backward(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    grad, q, k = args[0], args[1], args[2]
    batch, heads, q_len, kv = int(q.shape[0]), int(q.shape[1]), int(q.shape[2]), int(k.shape[2])
    qs, kvs = min(_q_split(q_len), q_len), min(512, kv)
    nthr = torch.get_num_threads()
    ws = Workspace()
    ws.outputs()
    # the kernel sees grad_out as (B, L, H, D): `.contiguous()` copies unless that view is dense
    if not grad.transpose(1, 2).is_contiguous():
        ws.alloc(grad.numel() * grad.element_size())
    ws.alloc(nthr * 2 * qs * kvs * _accum_bytes(q))
    ws.alloc(nthr * 2 * qs * kvs * q.element_size() if _reduced(q) else 0)
    for _ in range(min(nthr, batch * heads)):
        ws.alloc(qs * _accum_bytes(q))
    return ws


@rule("cpu", aten._safe_softmax.default)
def _safe_softmax(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    """The math path's `_safe_softmax` (aten/src/ATen/native/SoftMax.cpp): after the softmax, the rows that
    are all -inf are found through `isneginf` (a bool per element), `all` over the softmax dimension and a
    zero `scalar_tensor` of the result's dtype, all freed before it returns."""
    x, dim = args[0], int(args[1])
    ws = Workspace()
    ws.outputs()
    ws.alloc(x.numel())
    ws.alloc(x.numel() // max(1, int(x.shape[dim])) if x.dim() else 1)
    ws.alloc(out.element_size())
    return ws
