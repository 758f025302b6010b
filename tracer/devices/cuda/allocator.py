"""The CUDA caching allocator, replayed: a pure-Python model of PyTorch 2.13's
`c10/cuda/CUDACachingAllocator.cpp` fed with a request sequence (no torch import).

- `AllocatorConfig.parse("max_split_size_mb:128,roundup_power2_divisions:4,...")` or `.from_env()`
  (PYTORCH_CUDA_ALLOC_CONF, then PYTORCH_HIP_ALLOC_CONF, then PYTORCH_ALLOC_CONF, as the source reads them).
- `CachingAllocator(config, capacity_bytes)`: `malloc(size, stream) -> address`, `free(address)`,
  `memory_stats()` (torch.cuda.memory_stats keys), `segments()` (torch.cuda.memory._snapshot segments).
- `replay(requests)` / `replay_events(events)`: the peaks of allocated (block sizes after the split
  decision: `torch.cuda.max_memory_allocated`), requested (the sizes asked for) and reserved (segments:
  `torch.cuda.max_memory_reserved`), and the segment list at the reserved peak.

The rules themselves live in `allocator_config` (rounding, segment sizes, option parsing),
`allocator_core` (best fit, split, merge, free-and-retry, garbage collection) and
`allocator_expandable` (expandable segments). What is left out is listed in those modules.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .allocator_blocks import Block
from .allocator_config import AllocatorConfig, AllocatorConfigError
from .allocator_core import CachingAllocator, OutOfMemoryError

__all__ = [
    "AllocRequest",
    "AllocatorConfig",
    "AllocatorConfigError",
    "CachingAllocator",
    "OutOfMemoryError",
    "ReplayStats",
    "replay",
    "replay_events",
    "restore_segment",
]


@dataclass(frozen=True)
class AllocRequest:
    """One allocator call: "alloc" of `size` bytes under `key`, or "free" of `key`; on `stream`."""

    action: str
    key: int
    size: int = 0
    stream: int = 0


@dataclass
class ReplayStats:
    """What a replay reports; `*_peak_bytes` are the allocator's own peaks (Stat.peak)."""

    allocated_peak_bytes: int = 0
    requested_peak_bytes: int = 0
    reserved_peak_bytes: int = 0
    allocated_bytes: int = 0
    reserved_bytes: int = 0
    segments_at_reserved_peak: list[dict[str, Any]] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    num_segments_peak: int = 0
    num_alloc_retries: int = 0
    num_ooms: int = 0
    oom_at: int | None = None  # index of the request that ran out of memory, if one did
    reserved_after: list[int] = field(default_factory=list)  # per request, with replay(track_reserved=True)

    @property
    def fragmentation_bytes(self) -> int:
        """Reserved but not allocated at the reserved peak."""
        allocated = sum(int(s["allocated_size"]) for s in self.segments_at_reserved_peak)
        return self.reserved_peak_bytes - allocated

    def to_json(self) -> dict[str, Any]:
        return {
            "allocated_peak_bytes": self.allocated_peak_bytes,
            "requested_peak_bytes": self.requested_peak_bytes,
            "reserved_peak_bytes": self.reserved_peak_bytes,
            "num_segments_peak": self.num_segments_peak,
            "segments": [_segment_summary(s) for s in self.segments_at_reserved_peak],
        }


def _segment_summary(segment: dict[str, Any]) -> dict[str, Any]:
    return {k: segment[k] for k in ("address", "total_size", "segment_type", "allocated_size", "stream")}


def replay(
    requests: Iterable[AllocRequest],
    config: AllocatorConfig | None = None,
    capacity_bytes: int | None = None,
    allocator: CachingAllocator | None = None,
    track_reserved: bool = False,
) -> ReplayStats:
    """Run the requests through a (fresh, or the given) allocator; stop at the first OOM.
    Zero-byte requests get no block, as `NativeCachingAllocator::allocate` returns nullptr for them.
    `track_reserved`: keep the bytes reserved after every request (`ReplayStats.reserved_after`)."""
    alloc = allocator or CachingAllocator(config, capacity_bytes)
    fresh = alloc.total_allocated_memory == 0 and not alloc.active
    requests = list(requests)
    stats = ReplayStats()
    ptrs: dict[int, int] = {}
    seen_peak = alloc.stats.get("reserved_bytes").peak
    stats.segments_at_reserved_peak = alloc.segments()
    at_peak = -1  # the request after which the reserved peak was last raised
    reserved = alloc.stats.get("reserved_bytes")
    after = stats.reserved_after if track_reserved else None
    for index, req in enumerate(requests):
        try:
            _serve(alloc, req, ptrs)
        except OutOfMemoryError:
            stats.oom_at = index
            break
        if after is not None:
            after.append(reserved.current)
        if reserved.peak > seen_peak:
            seen_peak, at_peak = reserved.peak, index
            if not fresh:  # an allocator with a history cannot be replayed again: snapshot now
                stats.segments_at_reserved_peak = alloc.segments()
    if fresh and at_peak >= 0:
        stats.segments_at_reserved_peak = _segments_after(requests[: at_peak + 1], alloc)
    return _finish(alloc, stats)


def _serve(alloc: CachingAllocator, req: AllocRequest, ptrs: dict[int, int]) -> None:
    if req.action == "free":
        ptr = ptrs.pop(req.key)
        if ptr:
            alloc.free(ptr)
    elif req.size == 0:  # NativeCachingAllocator::allocate hands out nullptr for 0 bytes
        ptrs[req.key] = 0
    else:
        ptrs[req.key] = alloc.malloc(req.size, req.stream)


def _segments_after(requests: list[AllocRequest], like: CachingAllocator) -> list[dict[str, Any]]:
    """The segments after a prefix of the requests, replayed on an empty allocator like `like`. Taking a
    snapshot at every rise of the reserved peak instead costs the number of rises times the blocks: hours
    for a 70B-parameter step, whose parameters each raise it."""
    again = CachingAllocator(like.config, like.capacity_bytes)
    ptrs: dict[int, int] = {}
    for req in requests:
        _serve(again, req, ptrs)
    return again.segments()


def _finish(alloc: CachingAllocator, stats: ReplayStats) -> ReplayStats:
    s = alloc.stats
    stats.allocated_peak_bytes = s.get("allocated_bytes").peak
    stats.requested_peak_bytes = s.get("requested_bytes").peak
    stats.reserved_peak_bytes = s.get("reserved_bytes").peak
    stats.allocated_bytes = s.get("allocated_bytes").current
    stats.reserved_bytes = s.get("reserved_bytes").current
    stats.num_segments_peak = s.get("segment").peak
    stats.num_alloc_retries = s.counters["num_alloc_retries"]
    stats.num_ooms = s.counters["num_ooms"]
    stats.segments = alloc.segments()
    return stats


def replay_events(
    events: Iterable[tuple[str, int, int]],
    config: AllocatorConfig | None = None,
    capacity_bytes: int | None = None,
) -> ReplayStats:
    """The simulator's storage events, ("alloc"|"free", storage_id, nbytes_requested), on one stream."""
    return replay((AllocRequest(action, key, size) for action, key, size in events), config, capacity_bytes)


def restore_segment(
    alloc: CachingAllocator,
    address: int,
    stream: int,
    is_small: bool,
    blocks: list[tuple[int, int, bool]],
) -> None:
    """Put an existing segment into `alloc`: `blocks` are (size, requested_size, allocated) in address
    order, covering the segment; adjacent free blocks must already be merged. Peaks restart from here."""
    pool = alloc.small if is_small else alloc.large
    total = sum(size for size, _, _ in blocks)
    chain: list[Block] = []
    ptr = address
    for size, requested, allocated in blocks:
        block = Block(stream, size, ptr, pool, requested_size=requested, allocated=allocated)
        block.splice(chain[-1] if chain else None, None)
        chain.append(block)
        ptr += size
    split = len(chain) > 1
    for block in chain:
        if block.allocated:
            alloc.active[block.ptr] = block
            for name, amount in (("allocation", 1), ("active", 1)):
                alloc.stats.change(name, is_small, amount)
            for name in ("allocated_bytes", "active_bytes"):
                alloc.stats.change(name, is_small, block.size)
            alloc.stats.change("requested_bytes", is_small, block.requested_size)
        else:
            pool.insert_into_blocks(block)
            if split:
                alloc.stats.change("inactive_split", is_small, 1)
                alloc.stats.change("inactive_split_bytes", is_small, block.size)
    alloc.total_allocated_memory += total
    alloc.stats.change("segment", is_small, 1)
    alloc.stats.change("reserved_bytes", is_small, total)


def __getattr__(name: str) -> Any:
    """`Request`, this class's name in memtrace 0.1 (also the name of the facade's request), kept for one
    release with a DeprecationWarning."""
    if name == "Request":
        warnings.warn(
            "memtrace.tracer.devices.cuda.allocator.Request is now AllocRequest",
            DeprecationWarning,
            stacklevel=2,
        )
        return AllocRequest
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
