"""The trace through the CUDA caching allocator's model, replayed once: each storage counted for its block
(the figures), and each request as it was served (the pictures and the exports). Pure: no torch import.

`devices/cuda/placement.place` and `devices/cuda/served.serve` each replay the trace; this one replay gives
what both give, request for request, so a run places its trace once however many outputs it writes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeVar

from ..core.records import Event, StorageInfo, Trace
from ..devices.cuda.allocator import AllocatorConfig, CachingAllocator, ReplayStats, replay
from ..devices.cuda.placement import _requests as requests_of
from ..devices.cuda.served import SegmentEvent, Served, ServedTrace


@dataclass(frozen=True)
class Placed:
    """One replay of a trace through the allocator: its settings, the trace with every storage's bytes as
    its block's, the replay's figures (`place`'s) and every request as served (`serve`'s)."""

    config: AllocatorConfig
    trace: Trace
    stats: ReplayStats
    served: ServedTrace

    @property
    def reserved(self) -> tuple[int, ...]:
        """The bytes reserved after each event of the trace (the baseline's requests left out)."""
        return tuple(s.reserved for s in self.served.events)


class _Serving(CachingAllocator):
    """The allocator, remembering what each malloc and free did: the address, the block's size and the
    segments it made or released."""

    def __init__(self, config: AllocatorConfig) -> None:
        super().__init__(config, None)
        self.done: list[tuple[int, int, tuple[SegmentEvent, ...]]] = []

    def malloc(self, size: int, stream: int = 0) -> int:
        mark = len(self.segment_events)
        ptr: int = super().malloc(size, stream)
        self.done.append((ptr, self.active[ptr].size, tuple(self.segment_events[mark:])))
        return ptr

    def free(self, ptr: int) -> None:
        mark, block = len(self.segment_events), self.active[ptr].size
        super().free(ptr)
        self.done.append((ptr, block, tuple(self.segment_events[mark:])))


def place(trace: Trace, config: AllocatorConfig) -> Placed:
    """Replay the trace's requests (the baseline's, then every event's) on one stream, once."""
    requests = list(requests_of(trace))  # placement's: the baseline's, then every event's
    alloc = _Serving(config)
    stats = replay(requests, allocator=alloc, track_reserved=True)
    done = iter(alloc.done)
    ptrs: dict[int, int] = {}
    served: list[Served] = []
    for req, reserved in zip(requests, stats.reserved_after, strict=True):
        ptr = ptrs.pop(req.key, 0) if req.action == "free" else (1 if req.size else 0)
        if ptr:
            addr, size, segments = next(done)
            served.append(Served(addr, size, reserved, segments))
        else:
            addr = 0
            served.append(Served(0, 0, reserved, ()))
        if req.action == "alloc":
            ptrs[req.key] = addr
    base = len(trace.baseline)
    owners = {addr: sid for sid, addr in ptrs.items() if addr}
    serving = ServedTrace(tuple(served[:base]), tuple(served[base:]), tuple(stats.segments), owners)
    blocks = {r.key: s.block for r, s in zip(requests, served, strict=True) if r.action == "alloc"}
    events = tuple(_sized(ev, blocks.get(ev.storage, ev.nbytes)) for ev in trace.events)
    storages = {sid: _sized(info, blocks.get(sid, info.nbytes)) for sid, info in trace.storages.items()}
    return Placed(config, replace(trace, events=events, storages=storages), stats, serving)


Sized = TypeVar("Sized", Event, StorageInfo)


def _sized(record: Sized, nbytes: int) -> Sized:
    """The record with its block's bytes: itself where they are its own; else a copy of its fields with
    `nbytes` replaced (frozen, no `__post_init__`): `dataclasses.replace` introspects the class on each of a
    70B step's ~75k calls, and a long decode's trace has more."""
    if record.nbytes == nbytes:
        return record
    made = object.__new__(type(record))
    made.__dict__.update(record.__dict__)
    made.__dict__["nbytes"] = nbytes
    return made
