"""An op's arguments walked (lists and tuples included): their tensors, devices, writes, and whether they
hold known values. What the data-dependent resolver (`data_dependent.py`) asks of every op it runs."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import torch

from .known_values import KnownValues

_META = torch.device("meta")
_CPU = torch.device("cpu")


def is_device(x: Any) -> bool:
    return isinstance(x, torch.device)


def on_cpu(x: Any) -> Any:
    """An argument for the op's CPU run on known values: the meta device becomes the CPU."""
    return _CPU if is_device(x) and x == _META else x


def meta_like(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device="meta")
    return v


def all_unknown(values: Iterable[Any], known: KnownValues) -> bool:
    """Whether every tensor among the values (lists walked) is a plain meta tensor with no known value."""
    for x in values:
        kind = type(x)
        if kind is torch.Tensor or kind is torch.nn.Parameter:
            if not x.is_meta or known.holds(x.untyped_storage()._cdata):
                return False
        elif kind is list or kind is tuple:
            if not all_unknown(x, known):
                return False
        elif isinstance(x, torch.Tensor):
            return False
    return True


def written(func: Any, args: Any, kwargs: Any) -> list[torch.Tensor]:
    """The tensor arguments the op writes (in-place and out= ops)."""
    found = []
    for i, name in writes(func):
        value = args[i] if i < len(args) else kwargs.get(name)
        if isinstance(value, torch.Tensor):
            found.append(value)
    return found


@functools.cache
def writes(func: Any) -> tuple[tuple[int, str], ...]:
    """The positions and names of the arguments the op's schema writes."""
    schema = func._schema.arguments
    return tuple((i, a.name) for i, a in enumerate(schema) if writes_to(a))


def writes_to(arg: Any) -> bool:
    return arg.alias_info is not None and bool(arg.alias_info.is_write)


def all_real(values: Iterable[Any]) -> bool:
    """Whether every tensor among the values (lists walked) is a plain tensor off meta and no device argument
    is meta: `dispatch` then comes to running the op (no value on meta to read or keep, no meta output)."""
    for x in values:
        kind = type(x)
        if kind is torch.Tensor or kind is torch.nn.Parameter:
            if x.is_meta:
                return False
        elif kind is list or kind is tuple:
            if not all_real(x):
                return False
        elif isinstance(x, torch.Tensor) or (is_device(x) and x == _META):
            return False
    return True


def meta_in(args: Iterable[Any]) -> bool:
    """Whether a `device` argument (nested in lists and tuples) is meta."""
    return any(x == _META if is_device(x) else isinstance(x, list | tuple) and meta_in(x) for x in args)


def tensor_args(args: Iterable[Any], found: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors among an op's arguments (nested in lists and tuples), in order."""
    for x in args:
        if isinstance(x, torch.Tensor):
            found.append(x)
        elif isinstance(x, (list, tuple)):
            tensor_args(x, found)
    return found
