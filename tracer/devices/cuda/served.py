"""The step's requests through the caching-allocator model, remembered per event: the block's address and
size, the segments the request made or released, and the bytes reserved after it. Pure: no torch import.

`placement.place` gives each storage its block size; this replay keeps what the pictures and the memory
snapshot export need besides: reserved memory over the step, and where each block lives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...core.records import Kind, Trace
from .allocator import AllocatorConfig, CachingAllocator

SegmentEvent = tuple[str, int, int]  # (segment_alloc | segment_free | segment_map | ..., address, size)


@dataclass(frozen=True)
class Served:
    """One alloc or free as the allocator served it; addr 0 is a zero-byte request, which gets no block."""

    addr: int
    block: int  # the block's size (0 without a block)
    reserved: int  # reserved bytes after the request
    segment_events: tuple[SegmentEvent, ...] = ()  # what the request made the allocator do to its segments


@dataclass(frozen=True)
class ServedTrace:
    baseline: tuple[Served, ...]  # the storages that exist before the step, in trace.baseline order
    events: tuple[Served, ...]  # one per trace event
    segments: tuple[dict[str, Any], ...]  # the allocator's segments after the last event
    owners: dict[int, int]  # block address -> storage, for the blocks allocated after the last event


def serve(trace: Trace, config: AllocatorConfig | None = None) -> ServedTrace:
    """Replay the trace's requested sizes on one stream, as `placement.place` does, remembering each event."""
    alloc = CachingAllocator(config)
    ptrs: dict[int, int] = {}

    def one(alloc_it: bool, sid: int, nbytes: int) -> Served:
        mark = len(alloc.segment_events)
        addr = block = 0
        if alloc_it:
            if nbytes:
                addr = alloc.malloc(nbytes)
                block = alloc.active[addr].size
            ptrs[sid] = addr
        else:
            addr = ptrs.pop(sid, 0)
            if addr:
                block = alloc.active[addr].size
                alloc.free(addr)
        reserved = alloc.stats.get("reserved_bytes").current
        return Served(addr, block, reserved, tuple(alloc.segment_events[mark:]))

    baseline = tuple(one(True, sid, trace.storages[sid].nbytes) for sid in trace.baseline)
    events = tuple(one(ev.kind is Kind.ALLOC, ev.storage, ev.nbytes) for ev in trace.events)
    owners = {addr: sid for sid, addr in ptrs.items() if addr}
    return ServedTrace(baseline, events, tuple(alloc.segments()), owners)
