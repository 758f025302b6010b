"""FLOPs of an op, as PyTorch's flop_counter counts them (and the CPU's fused attention), memoized by the
op and its arguments' shapes; the op's short name."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

_EXTRA_FLOPS: dict[str, Callable[[Any], int]] = {
    # the CPU's fused attention, which flop_counter has no formula for: the same count as any SDPA
    "aten._scaled_dot_product_flash_attention_for_cpu": lambda a: int(
        sdpa_flop_count(a[0].shape, a[1].shape, a[2].shape)
    ),
    "aten._scaled_dot_product_flash_attention_for_cpu_backward": lambda a: int(
        sdpa_backward_flop_count(a[0].shape, a[1].shape, a[2].shape, a[3].shape)
    ),
}

_FLOPS: dict[tuple[Any, ...], int] = {}  # a formula's count by op and arguments, tensors by their shapes


def count_flops(func: Any, args: Any, kwargs: Any, out: Any) -> int:
    """FLOPs as torch.utils.flop_counter counts them (2 per multiply-add), without its module tracking,
    whose hooks would hold outputs alive and change the lifetimes being measured."""
    extra, fn = _flop_formulas(func)
    if extra is None and fn is None:
        return 0
    key = (func, _shapes(args), _shapes(tuple((kwargs or {}).items())), _shapes((out,)))
    try:
        found = _FLOPS.get(key)
    except TypeError:  # an argument that is not hashable: counted each time
        return _count(extra, fn, args, kwargs, out)
    if found is None:  # the fused attention's own counts too (about 1 ms each, per layer and step)
        found = _FLOPS[key] = _count(extra, fn, args, kwargs, out)
    return found


def _count(
    extra: Callable[[Any], int] | None, fn: Callable[..., Any] | None, args: Any, kwargs: Any, out: Any
) -> int:
    if extra is not None:
        return extra(args)
    return _formula(fn, args, kwargs, out) if fn is not None else 0


def _formula(fn: Callable[..., Any], args: Any, kwargs: Any, out: Any) -> int:
    try:
        return int(fn(*args, **(kwargs or {}), out_val=out))
    except Exception:  # a formula that does not apply to these arguments counts nothing
        return 0


def _shapes(values: tuple[Any, ...] | list[Any]) -> tuple[Any, ...]:
    """Arguments as flop_counter's formulas read them (a tensor by its shape), hashable."""
    return tuple(
        (torch.Size, x.shape)
        if isinstance(x, torch.Tensor)
        else _shapes(x)
        if isinstance(x, (tuple, list))
        else (type(x), x)
        for x in values
    )


def has_flops(func: Any) -> bool:
    """Whether `count_flops` may count the op anything (it has a formula)."""
    extra, fn = _flop_formulas(func)
    return extra is not None or fn is not None


@functools.cache
def _flop_formulas(func: Any) -> tuple[Callable[[Any], int] | None, Callable[..., Any] | None]:
    """The op's FLOP formula: memtrace's own, or flop_counter's (by overload packet)."""
    packet = getattr(func, "overloadpacket", None)
    return _EXTRA_FLOPS.get(str(packet)), flop_registry.get(packet)


@functools.cache
def op_name(func: Any) -> str:
    return str(func.overloadpacket.__name__) if hasattr(func, "overloadpacket") else str(func)
