"""The simulated step as the CUDA caching allocator places it (pure: no torch import).

The trace's storages go through the allocator model (`allocator.py`) in program order on one stream: the
parameters, buffers and inputs that exist before the step first, then every alloc and free. Each storage then
counts for the block it got (its request rounded to 512 bytes, or a whole unsplit block), so the analysis of
the placed trace gives `torch.cuda.max_memory_allocated()` with categories that still sum to it; the replay
itself gives reserved memory (segments) and fragmentation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from ...core.records import Event, Kind, StorageInfo, Trace
from .allocator import AllocatorConfig, AllocRequest, CachingAllocator, ReplayStats, replay


def _requests(trace: Trace) -> Iterator[AllocRequest]:
    for sid in trace.baseline:
        yield AllocRequest("alloc", sid, trace.storages[sid].nbytes)
    for ev in trace.events:
        yield AllocRequest("alloc" if ev.kind is Kind.ALLOC else "free", ev.storage, ev.nbytes)


class _Recording(CachingAllocator):
    """The allocator, remembering the size of the block each request got."""

    def __init__(self, config: AllocatorConfig | None) -> None:
        super().__init__(config, None)
        self.sizes: list[int] = []  # the block size each allocation got, in order

    def malloc(self, size: int, stream: int = 0) -> int:
        ptr: int = super().malloc(size, stream)
        self.sizes.append(self.active[ptr].size)
        return ptr


def place(trace: Trace, config: AllocatorConfig | None = None) -> tuple[Trace, ReplayStats]:
    """The trace with every storage's bytes replaced by its block's size, and the allocator's figures (with
    the bytes reserved after every request, the baseline's first: `ReplayStats.reserved_after`)."""
    alloc = _Recording(config)
    requests = list(_requests(trace))
    stats = replay(requests, allocator=alloc, track_reserved=True)
    sizes = iter(alloc.sizes)
    block: dict[int, int] = {r.key: (next(sizes) if r.size else 0) for r in requests if r.action == "alloc"}
    events = tuple(_resized(ev, block) for ev in trace.events)
    storages = {sid: _stored(info, block) for sid, info in trace.storages.items()}
    return replace(trace, events=events, storages=storages), stats


def _resized(ev: Event, block: dict[int, int]) -> Event:
    return replace(ev, nbytes=block.get(ev.storage, ev.nbytes))


def _stored(info: StorageInfo, block: dict[int, int]) -> StorageInfo:
    return replace(info, nbytes=block.get(info.storage, info.nbytes))
