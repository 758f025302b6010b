"""Storages in CUDA unified (managed) memory: bitsandbytes' paged optimizer state (`cudaMallocManaged`, not
the caching allocator). While `managed_memory()` is active, the storages the simulation allocates are managed
ones: the recorder files them apart (`Trace.managed_bytes`), outside allocated and reserved."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
