"""Storages in CUDA unified (managed) memory: bitsandbytes' paged optimizer state (`cudaMallocManaged`, not
the caching allocator). While `managed_memory()` is active, the storages the simulation allocates are managed
ones: the recorder files them apart (`Trace.managed_bytes`), outside allocated and reserved. While
`host_memory()` is active, they are pinned host memory (an offloaded KV cache's copies): apart too, with
their peak (`Trace.host_peak_bytes`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from torch.multiprocessing.reductions import StorageWeakRef

_DEPTH = {"managed": 0, "host": 0}  # how many blocks of each kind are open now


@contextmanager
def _within(kind: str) -> Iterator[None]:
    _DEPTH[kind] += 1
    try:
        yield
    finally:
        _DEPTH[kind] -= 1


def managed_memory() -> AbstractContextManager[None]:
    """New storages are managed memory while the block runs."""
    return _within("managed")


def allocating_managed() -> bool:
    return _DEPTH["managed"] > 0


def host_memory() -> AbstractContextManager[None]:
    """New storages are pinned host memory while the block runs (an offloaded KV cache's copies on a CUDA
    target): filed apart from the device's allocator, their live bytes and peak kept by `PinnedHost`."""
    return _within("host")


def allocating_host() -> bool:
    return _DEPTH["host"] > 0


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
