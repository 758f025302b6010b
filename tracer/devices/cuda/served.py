"""The step's requests through the caching-allocator model, remembered per event: the block's address and
size, the segments the request made or released, and the bytes reserved after it. Pure: no torch import.

`placement.place` gives each storage its block size; this replay keeps what the pictures and the memory
snapshot export need besides: reserved memory over the step, and where each block lives.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any, NamedTuple

from ...core.records import Event, Kind, Trace
from .allocator import AllocatorConfig, CachingAllocator, ReplayStats, _finish

SegmentEvent = tuple[str, int, int]  # (segment_alloc | segment_free | segment_map | ..., address, size)


class Served(NamedTuple):
    """One alloc or free as the allocator served it; addr 0 is a zero-byte request, which gets no block. A
    named tuple: a long decode's placement makes a million (a frozen dataclass's are slower to make and
    larger)."""

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


@dataclass
class Replayed:
    """`replay_served`'s answer: the replay's figures (`allocator.replay`'s, with the bytes reserved after
    every request), every request as served (the baseline's first), each storage's block size and the
    address of every storage still allocated at the end."""

    stats: ReplayStats
    served: list[Served]
    blocks: dict[int, int]
    ptrs: dict[int, int]


def replay_served(trace: Trace, config: AllocatorConfig | None = None) -> Replayed:
    """The trace's requests (the baseline's, then every event's) on one stream of a fresh allocator, once:
    what `allocator.replay(..., track_reserved=True)` gives, and each request as `serve` remembers it.

    The segments at the reserved peak (after the request where it last rose): at a rise, a fork of the
    allocator (`CachingAllocator.fork`, which costs its blocks) is kept when at least that many requests
    (times `_SNAPSHOT_EVERY`) were served since the last fork; at the end the requests from the last fork
    to the peak's last rise (fewer than the blocks it copied) are served on that fork, and its segments
    read. Before the first fork that is an empty allocator and the requests from the start, as
    `allocator.replay` does. The allocator keeps the figures `_finish` reads only (`FigureStats`)."""
    alloc = CachingAllocator(config, figures_only=True)
    reserved = alloc.stats.get("reserved_bytes")
    segment_events, active = alloc.segment_events, alloc.active
    stats = ReplayStats(segments_at_reserved_peak=alloc.segments())
    after, served = stats.reserved_after, list[Served]()
    ptrs: dict[int, int] = {}
    blocks: dict[int, int] = {}
    seen_peak, at_peak = reserved.peak, -1
    forked, fork, held = -1, CachingAllocator(config, figures_only=True), dict[int, int]()
    malloc, free, append, add = alloc.malloc, alloc.free, after.append, served.append
    made, none, alloc_kind = tuple.__new__, (), Kind.ALLOC  # a Served made as a plain tuple is (faster)
    for index, request in enumerate(_in_order(trace)):
        mark, sid = len(segment_events), request.storage
        if request.kind is alloc_kind:
            nbytes = request.nbytes
            addr = malloc(nbytes) if nbytes else 0
            block = active[addr].size if addr else 0
            ptrs[sid] = addr
            blocks[sid] = block
        else:
            addr = ptrs.pop(sid)
            if addr:
                block = active[addr].size
                free(addr)
            else:
                block = 0
        current = reserved.current
        append(current)
        if len(segment_events) == mark:
            add(made(Served, (addr, block, current, none)))
        else:
            add(made(Served, (addr, block, current, tuple(segment_events[mark:]))))
        if reserved.peak > seen_peak:
            seen_peak, at_peak = reserved.peak, index
            cost = len(active) + len(alloc.small.blocks) + len(alloc.large.blocks)
            if index - forked >= _SNAPSHOT_EVERY * cost:
                forked, fork, held = index, alloc.fork(), dict(ptrs)
    if at_peak >= 0:
        _serve_on(fork, held, islice(_in_order(trace), forked + 1, at_peak + 1))
        stats.segments_at_reserved_peak = fork.segments()
    return Replayed(_finish(alloc, stats), served, blocks, ptrs)


def _serve_on(alloc: CachingAllocator, ptrs: dict[int, int], requests: Iterable[_Request | Event]) -> None:
    """Serve the requests on `alloc` as `replay_served` does (a zero-byte request gets no block)."""
    for request in requests:
        if request.kind is Kind.ALLOC:
            ptrs[request.storage] = alloc.malloc(request.nbytes) if request.nbytes else 0
        elif addr := ptrs.pop(request.storage):
            alloc.free(addr)


_SNAPSHOT_EVERY = 1  # requests served per block of the allocator between two forks at a peak's rise


class _Request(NamedTuple):
    """A request of the baseline, as `replay_served` reads an event: alloc or free, storage, bytes."""

    kind: Kind
    storage: int
    nbytes: int


def _baseline(trace: Trace) -> list[_Request]:
    return [_Request(Kind.ALLOC, sid, trace.storages[sid].nbytes) for sid in trace.baseline]


def _in_order(trace: Trace) -> Iterator[_Request | Event]:
    """The requests in the order they are served: the baseline's storages, then every event."""
    return chain(_baseline(trace), trace.events)
