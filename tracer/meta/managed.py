"""Storages in CUDA unified (managed) memory: bitsandbytes' paged optimizer state (`cudaMallocManaged`, not
the caching allocator). While `managed_memory()` is active, the storages the simulation allocates are managed
ones: the recorder files them apart (`Trace.managed_bytes`), outside allocated and reserved. While
`host_memory()` is active, they are pinned host memory (an offloaded KV cache's copies): apart too, with
their peak (`Trace.host_peak_bytes`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.multiprocessing.reductions import StorageWeakRef

_DEPTH = [0]


@contextmanager
def managed_memory() -> Iterator[None]:
    """New storages are managed memory while the block runs."""
    _DEPTH[0] += 1
    try:
        yield
    finally:
        _DEPTH[0] -= 1


def allocating_managed() -> bool:
    return _DEPTH[0] > 0


_HOST = [0]


@contextmanager
def host_memory() -> Iterator[None]:
    """New storages are pinned host memory while the block runs (an offloaded KV cache's copies on a CUDA
    target): filed apart from the device's allocator, their live bytes and peak kept by `PinnedHost`."""
    _HOST[0] += 1
    try:
        yield
    finally:
        _HOST[0] -= 1


def allocating_host() -> bool:
    return _HOST[0] > 0


class PinnedHost:
    """The host storages of a simulation: each one's bytes while it lives, and the largest sum live at once
    (swept at each new one, where the peak can only rise)."""

    def __init__(self) -> None:
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak_bytes = 0

    def add(self, storage: torch.UntypedStorage, nbytes: int) -> None:
        self._sweep()
        self.live[storage._cdata] = (StorageWeakRef(storage), nbytes)
        self.peak_bytes = max(self.peak_bytes, sum(n for _, n in self.live.values()))

    def holds(self, storage: torch.UntypedStorage) -> bool:
        found = self.live.get(storage._cdata)
        return found is not None and not found[0].expired()

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            del self.live[key]
