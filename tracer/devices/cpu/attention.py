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

from ...core.registry import patch
from ..shared import SdpaCall, meta_sdpa, sdpa_replaced

_FLASH = 1  # torch.nn.attention.SDPBackend.FLASH_ATTENTION


def _stand_in(t: torch.Tensor | None) -> torch.Tensor | None:
    """A CPU tensor with t's shape and dtype whose memory is a single last-dimension row."""
    if t is None:
        return None
    shape = tuple(t.shape)
    base = torch.empty(shape[-1] if shape else 1, dtype=t.dtype)
    return base.as_strided(shape, (0,) * (len(shape) - 1) + (1,)) if shape else base[0]


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
