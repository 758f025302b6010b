"""Replay a real GPU memory snapshot's trace through the allocator model and compare to the byte.

A snapshot holds the allocator's final segments and the trace of requests since recording began.
`starting_state` rebuilds the allocator as it stood when the trace began: the final segments, less those
the trace allocated, plus those it freed; blocks allocated then are those the trace frees before it
allocates them, and the allocated blocks it never touches. A block's size is its rounded request,
extended over a following gap the large pool would not have split off (<= 1 MiB). `replay_snapshot`
then feeds the trace's requests (alloc with its requested size, free_completed) to `CachingAllocator`
and compares every block address, every segment_alloc / segment_free, and the final segments.

The model learns nothing from the trace but the address of each new segment (cudaMalloc's answer: the
address of the alloc it was made for). A run of segment_free in the trace is replayed as emptyCache,
which frees what malloc's free-and-retry would free under the default settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .allocator import CachingAllocator, restore_segment
from .allocator_config import K_SMALL_BUFFER, K_SMALL_SIZE, AllocatorConfig
from .snapshot import Snapshot, TraceEvent

_FREES = ("free_requested", "free_completed")


@dataclass
class StartSegment:
    address: int
    total_size: int
    stream: int
    is_small: bool
    blocks: list[tuple[int, int, bool]] = field(default_factory=list)  # (size, requested, allocated)


@dataclass
class SnapshotReplay:
    """How a replay compares with the snapshot: `match` means segments and every address agree."""

    segments_expected: int
    segments_replayed: int
    reserved_expected: int
    reserved_replayed: int
    allocated_peak_bytes: int
    requested_peak_bytes: int
    reserved_peak_bytes: int
    address_mismatches: int
    segment_events_match: bool
    segments_match: bool
    first_difference: str = ""

    @property
    def match(self) -> bool:
        return self.segments_match and self.address_mismatches == 0 and self.segment_events_match


def _segment_changes(trace: list[TraceEvent], final: dict[int, dict[str, Any]]) -> dict[int, StartSegment]:
    segments = {
        a: StartSegment(a, int(s["total_size"]), int(s["stream"]), s["segment_type"] == "small")
        for a, s in final.items()
    }
    for e in reversed(trace):
        if e.action == "segment_alloc":
            segments.pop(e.addr)
        elif e.action == "segment_free":
            segments[e.addr] = StartSegment(e.addr, e.size, e.stream, e.size == K_SMALL_BUFFER)
    return segments


def _start_allocations(
    trace: list[TraceEvent], final: dict[int, dict[str, Any]]
) -> dict[int, tuple[int, int]]:
    """address -> (requested size, block size or 0 when to be inferred) of blocks allocated at the start."""
    first: dict[int, TraceEvent] = {}
    for e in trace:
        if e.action == "alloc" or e.action in _FREES:
            first.setdefault(e.addr, e)
    out = {a: (e.size, 0) for a, e in first.items() if e.action in _FREES}
    for seg in final.values():
        for b in seg["blocks"]:
            if b["state"] != "inactive" and b["address"] not in first:
                out[b["address"]] = (b["requested_size"], b["size"])
    return out


def _fill_blocks(seg: StartSegment, allocs: list[tuple[int, int, int]], config: AllocatorConfig) -> None:
    """Sizes of the start blocks of one segment, with the free gaps between them as free blocks."""
    end, cursor = seg.address + seg.total_size, seg.address
    for i, (addr, requested, known) in enumerate(allocs):
        nxt = allocs[i + 1][0] if i + 1 < len(allocs) else end
        size = known or config.round_size(requested)
        if not known and not seg.is_small and 0 < nxt - (addr + size) <= K_SMALL_SIZE:
            size = nxt - addr  # the remainder was too small to split off
        if addr < cursor or addr + size > nxt:
            raise ValueError(f"start block at {addr:#x} overlaps its neighbours")
        if addr > cursor:
            seg.blocks.append((addr - cursor, 0, False))
        seg.blocks.append((size, requested, True))
        cursor = addr + size
    if cursor < end:
        seg.blocks.append((end - cursor, 0, False))


def starting_state(
    snap: Snapshot, device: int = 0, config: AllocatorConfig | None = None
) -> list[StartSegment]:
    """The allocator's segments and blocks when the trace of `device` began."""
    cfg = config or AllocatorConfig()
    trace = snap.traces[device] if device < len(snap.traces) else []
    final = {int(s["address"]): s for s in snap.device_segments(device)}
    segments = _segment_changes(trace, final)
    allocations = sorted(_start_allocations(trace, final).items())
    for seg in sorted(segments.values(), key=lambda s: s.address):
        inside = [(a, r, k) for a, (r, k) in allocations if seg.address <= a < seg.address + seg.total_size]
        _fill_blocks(seg, inside, cfg)
    return sorted(segments.values(), key=lambda s: s.address)


def _normal(segments: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    def state(s: str) -> str:
        return "inactive" if s == "inactive" else "allocated"

    return [
        (
            int(s["address"]),
            int(s["total_size"]),
            s["segment_type"],
            tuple((int(b["address"]), int(b["size"]), state(b["state"])) for b in s["blocks"]),
        )
        for s in segments
    ]


class _Replayer:
    def __init__(self, snap: Snapshot, device: int, config: AllocatorConfig) -> None:
        self.trace = snap.traces[device] if device < len(snap.traces) else []
        self.current = 0
        self.alloc = CachingAllocator(config, address_source=lambda size: self.current)
        for seg in starting_state(snap, device, config):
            restore_segment(self.alloc, seg.address, seg.stream, seg.is_small, seg.blocks)
        self.alloc.reset_peak_stats()
        self.ptrs = {b.ptr: b.ptr for b in self.alloc.active.values()}
        self.mismatches: list[str] = []
        self.expected_segment_events: list[tuple[str, int, int]] = []

    def run(self) -> None:
        in_free_run = False
        for e in self.trace:
            if e.action in ("segment_alloc", "segment_free"):
                self.expected_segment_events.append((e.action, e.addr, e.size))
            if e.action == "segment_free" and not in_free_run:
                self.alloc.empty_cache()
            in_free_run = e.action == "segment_free"
            if e.action == "alloc":
                self.current = e.addr
                ptr = self.alloc.malloc(e.size, e.stream)
                if ptr != e.addr:
                    self.mismatches.append(f"alloc of {e.size} B at {ptr:#x}, the GPU gave {e.addr:#x}")
                self.ptrs[e.addr] = ptr
            elif e.action == "free_completed":
                self.alloc.free(self.ptrs.pop(e.addr))


def replay_snapshot(snap: Snapshot, device: int = 0, config: AllocatorConfig | None = None) -> SnapshotReplay:
    """Rebuild the start, replay the trace of `device`, compare with the snapshot's segments."""
    r = _Replayer(snap, device, config or AllocatorConfig())
    r.run()
    got, want = r.alloc.segments(), snap.device_segments(device)
    same = _normal(got) == _normal(want)
    events_ok = not r.expected_segment_events or r.alloc.segment_events == r.expected_segment_events
    first = r.mismatches[0] if r.mismatches else ""
    if not same and not first:
        pairs = zip(_normal(got), _normal(want), strict=False)
        first = next((f"{g} != {w}" for g, w in pairs if g != w), "segment count")
    stats = r.alloc.stats
    return SnapshotReplay(
        segments_expected=len(want),
        segments_replayed=len(got),
        reserved_expected=sum(int(s["total_size"]) for s in want),
        reserved_replayed=stats.get("reserved_bytes").current,
        allocated_peak_bytes=stats.get("allocated_bytes").peak,
        requested_peak_bytes=stats.get("requested_bytes").peak,
        reserved_peak_bytes=stats.get("reserved_bytes").peak,
        address_mismatches=len(r.mismatches),
        segment_events_match=events_ok,
        segments_match=same,
        first_difference=first[:500],
    )
