"""The trace through the CUDA caching allocator's model, replayed once: each storage counted for its block
(the figures), and each request as it was served (the pictures and the exports). Pure: no torch import.

`devices/cuda/placement.place` and `devices/cuda/served.serve` each replay the trace; this one replay gives
what both give, request for request, so a run places its trace once however many outputs it writes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeVar

from ..core.records import Event, StorageInfo, Trace
from ..devices.cuda.allocator import AllocatorConfig, ReplayStats
from ..devices.cuda.served import ServedTrace, replay_served


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


def place(trace: Trace, config: AllocatorConfig) -> Placed:
    """Replay the trace's requests (the baseline's, then every event's) on one stream, once."""
    done = replay_served(trace, config)
    base, served, blocks = len(trace.baseline), done.served, done.blocks
    owners = {addr: sid for sid, addr in done.ptrs.items() if addr}
    serving = ServedTrace(tuple(served[:base]), tuple(served[base:]), tuple(done.stats.segments), owners)
    events = tuple(_sized(ev, blocks.get(ev.storage, ev.nbytes)) for ev in trace.events)
    storages = {sid: _sized(info, blocks.get(sid, info.nbytes)) for sid, info in trace.storages.items()}
    return Placed(config, replace(trace, events=events, storages=storages), done.stats, serving)


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
