"""Hugging Face's offloaded KV caches (`--kv-cache offloaded|offloaded_static`) where memtrace runs them.

Transformers 5's `Cache(offloading=True)` (cache_utils.py) keeps each layer's keys and values on the host and
moves them one layer ahead: `Cache.update(layer l)` waits for the prefetch stream, prefetches the next
offloaded layer (`layers[l+1].prefetch()`: `.to(device, non_blocking=True)`, circling back to the first after
the last), runs the layer's own update (a `torch.cat` or an in-place write), then offloads layer l
(`.to("cpu", non_blocking=True)`, which pins the host copy when the source is a CUDA tensor). Its code runs
as it is; memtrace stands in only for what cannot run here:

- the streams: `torch.cuda.default_stream(device)` of a meta or CPU tensor, and a prefetch stream that is
  not a CUDA one, are a stream that waits for nothing (the simulation is sequential; on the CPU, where
  transformers itself fails on `torch.cuda`, host and device are one). On a real GPU nothing is changed;
- on the CUDA target, the moves of meta tensors inside `Cache.offload`/`Cache.prefetch`: an offload makes a
  host copy, filed apart from the device's allocator (pinned host memory, `cuda.host_bytes`); a prefetch of
  a host copy makes a device copy (an allocation, `kv_cache`); a tensor already where it goes is itself,
  as for real. On the CPU target `.to("cpu")` of a CPU tensor is the tensor itself, as transformers finds.

What a layer's update allocates on the device under an offloaded cache (the prefetched copy, the grown
cache) is `kv_cache` from the start, since most of it dies inside the forward, before the cache is marked.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from ..core.records import Category
from ..meta.managed import host_memory
from .libraries import library_module
from .recorder import active_recorder

_HOST = "_memtrace_host_copy"  # the attribute marking the meta tensors that stand for host copies


def is_host(t: torch.Tensor) -> bool:
    """A meta tensor that stands for an offloaded layer's host copy."""
    return getattr(t, _HOST, False) is True


class _SameStream:
    """A stream that waits for nothing: where the simulation runs, or on the CPU, work is in order."""

    def wait_stream(self, other: Any) -> None:
        return None

    def __enter__(self) -> _SameStream:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@contextmanager
def offloaded_caches() -> Iterator[None]:
    """Transformers' offloading caches run here, as the module's docstring says; nothing without it."""
    module = library_module("transformers.cache_utils")
    if module is None:
        yield
        return
    cache = module.Cache
    with ExitStack() as stack:
        for name, wrap in (("update", _update), ("offload", _offload), ("prefetch", _prefetch)):
            original = getattr(cache, name)
            setattr(cache, name, wrap(original))
            stack.callback(setattr, cache, name, original)
        default = torch.cuda.default_stream
        torch.cuda.default_stream = _default_stream(default)  # type: ignore[assignment]
        stack.callback(setattr, torch.cuda, "default_stream", default)
        yield


def _default_stream(original: Any) -> Any:
    @functools.wraps(original)
    def default_stream(device: Any = None) -> Any:
        if isinstance(device, torch.device) and device.type in ("meta", "cpu"):
            return _SameStream()
        return original(device)

    return default_stream


def _update(original: Any) -> Any:
    @functools.wraps(original)
    def update(self: Any, *args: Any, **kwargs: Any) -> Any:
        key_states = args[0] if args else kwargs.get("key_states")
        if not getattr(self, "offloading", False) or not isinstance(key_states, torch.Tensor):
            return original(self, *args, **kwargs)
        if key_states.device.type in ("meta", "cpu"):
            self.prefetch_stream = _SameStream()
        rec = active_recorder() if key_states.device.type == "meta" else None
        with rec.allocating_as(Category.KV_CACHE) if rec is not None else nullcontext():
            return original(self, *args, **kwargs)

    return update


def _apart() -> bool | None:
    """In a simulation (None outside one): whether host and device are apart (the CUDA target)."""
    rec = active_recorder()
    return None if rec is None else rec.cuda


def _offload(original: Any) -> Any:
    @functools.wraps(original)
    def offload(self: Any, *args: Any, **kwargs: Any) -> Any:
        apart = _apart()
        with _Moves(apart) if apart is not None else nullcontext():
            return original(self, *args, **kwargs)

    return offload


def _prefetch(original: Any) -> Any:
    @functools.wraps(original)
    def prefetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _apart():  # outside a simulation, or on the CPU target: as transformers does
            return original(self, *args, **kwargs)
        # a layer's device is meta here: it is told the GPU's, so its own check (`keys.device != device`)
        # asks the moves below whether its tensors are on the host
        moved = [layer for layer in self.layers if getattr(layer, "device", None) == _META]
        for layer in moved:
            layer.device = _GPU
        try:
            with _Moves(True):
                return original(self, *args, **kwargs)
        finally:
            for layer in moved:
                layer.device = _META

    return prefetch


_META, _GPU = torch.device("meta"), torch.device("cuda")


class _Moves(TorchFunctionMode):
    """`.to(...)` of meta tensors inside an offload or a prefetch. Host and device apart (the CUDA target):
    to the host, a host copy (apart from the device's allocator); to the GPU, a device copy of a host copy;
    a tensor already there, itself. On the CPU target a move is the tensor itself."""

    def __init__(self, apart: bool) -> None:
        super().__init__()
        self.apart = apart

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.to and args and args[0].device.type == "meta":
            dest = kwargs.get("device", args[1] if len(args) > 1 else None)
            if isinstance(dest, str | torch.device):
                return _moved(args[0], torch.device(dest)) if self.apart else args[0]
        return func(*args, **kwargs)


def _moved(t: torch.Tensor, dest: torch.device) -> torch.Tensor:
    if (dest.type == "cpu") == is_host(t):
        return t
    if dest.type == "cpu":
        with host_memory():
            copy = t.to(_META, copy=True)
        setattr(copy, _HOST, True)
        return copy
    return t.to(_META, copy=True)
