"""Known values of meta tensors: real CPU values kept beside their meta twins (engine/data_dependent.py says
which ops keep them), and `torch.tensor`/`torch.as_tensor` of Python data lifted to meta with its values.

Values are kept for floating tensors of at most 4M elements and integer/boolean ones of at most 16M.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef

MAX_KNOWN = 1 << 22  # elements: larger floating results keep no known value
MAX_KNOWN_INDEX = 1 << 24  # elements: larger integer and boolean results (indices, masks) keep none
_META = torch.device("meta")
_CPU = torch.device("cpu")
_Key = tuple[int, tuple[int, ...], tuple[int, ...], torch.dtype]


def keepable(t: torch.Tensor) -> bool:
    return t.numel() <= (MAX_KNOWN if t.is_floating_point() or t.is_complex() else MAX_KNOWN_INDEX)


class KnownValues:
    """Known values of meta tensors, by storage (views of one storage keep their own) and layout."""

    def __init__(self) -> None:
        self._by_storage: dict[int, tuple[StorageWeakRef, dict[_Key, torch.Tensor]]] = {}
        self._puts = 0
        self.touched: set[int] | None = None  # while set: storages whose known values changed

    @staticmethod
    def _key(t: torch.Tensor) -> _Key:
        return (int(t.storage_offset()), tuple(t.shape), tuple(t.stride()), t.dtype)

    def get(self, t: torch.Tensor) -> torch.Tensor | None:
        entry = self._by_storage.get(t.untyped_storage()._cdata)
        if entry is None or entry[0].expired():
            return None
        return entry[1].get(self._key(t))

    def put(self, t: torch.Tensor, value: torch.Tensor) -> None:
        if not keepable(value) or tuple(value.shape) != tuple(t.shape):
            return
        self._puts += 1
        if self._puts % 4096 == 0:  # forget the values of storages that died
            self._by_storage = {k: e for k, e in self._by_storage.items() if not e[0].expired()}
        storage = t.untyped_storage()
        entry = self._by_storage.get(storage._cdata)
        if entry is None or entry[0].expired():
            entry = (StorageWeakRef(storage), {})
            self._by_storage[storage._cdata] = entry
        entry[1][self._key(t)] = value

    def wrote(self, t: torch.Tensor) -> None:
        """The tensor's storage was written in place (its values changed, known or not)."""
        if self.touched is not None:
            self.touched.add(t.untyped_storage()._cdata)

    def forget(self, t: torch.Tensor) -> None:
        key = t.untyped_storage()._cdata
        if self._by_storage.pop(key, None) is not None and self.touched is not None:
            self.touched.add(key)

    def holds(self, storage: int) -> bool:
        """Whether some view of the storage (its `_cdata`) may have a known value."""
        return storage in self._by_storage


@contextmanager
def lifted(values: KnownValues) -> Iterator[None]:
    """`torch.tensor(data, device=meta)` and `torch.as_tensor`: PyTorch builds these on the CPU below the
    dispatch modes, so their values are kept here (the image mean of a transform, a box's scale ratio). The
    two functions are wrapped while the step runs (a torch-function mode would cost every call)."""
    originals = torch.tensor, torch.as_tensor
    torch.tensor, torch.as_tensor = _lifting(torch.tensor, values), _lifting(torch.as_tensor, values)
    try:
        yield
    finally:
        torch.tensor, torch.as_tensor = originals


def _lifting(func: Callable[..., torch.Tensor], values: KnownValues) -> Callable[..., torch.Tensor]:
    @functools.wraps(func)
    def made(*args: Any, **kwargs: Any) -> torch.Tensor:
        if args and isinstance(args[0], (list, tuple)):  # a list of 0-d tensors (RoPE scaling's new_freqs)
            args = (_numbers(args[0]), *args[1:])
        out = func(*args, **kwargs)
        lifted = isinstance(out, torch.Tensor) and out.device == _META
        if lifted and out.numel() <= MAX_KNOWN and not isinstance(args[0], torch.Tensor):
            values.put(out, func(*args, **{**kwargs, "device": _CPU}))
        return out

    return made


def _numbers(data: Any) -> Any:
    """A nested list's 0-d meta tensors read as Python numbers (`.item()` through the dispatch mode: their
    known values, else the policy's), as `torch.tensor` reads them on the CPU."""
    if isinstance(data, (list, tuple)):
        return type(data)(_numbers(x) for x in data)
    if isinstance(data, torch.Tensor) and data.device == _META and data.dim() == 0:
        return data.item()
    return data
