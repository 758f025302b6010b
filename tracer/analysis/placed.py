"""The trace through the CUDA caching allocator's model, replayed once: each storage counted for its block
(the figures), and each request as it was served (the pictures and the exports). Pure: no torch import.

`devices/cuda/placement.place` and `devices/cuda/served.serve` each replay the trace; this one replay gives
what both give, request for request, so a run places its trace once however many outputs it writes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..core.records import Event, StorageInfo, Trace, make_event, make_storage_info
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
    events = tuple(
        ev if (n := blocks.get(ev.storage, ev.nbytes)) == ev.nbytes else _event(ev, n) for ev in trace.events
    )
    storages = {
        sid: info if (n := blocks.get(sid, info.nbytes)) == info.nbytes else _storage(info, n)
        for sid, info in trace.storages.items()
    }
    return Placed(config, replace(trace, events=events, storages=storages), done.stats, serving)


def _event(ev: Event, nbytes: int) -> Event:
    """The event with its block's bytes (`make_event`: `dataclasses.replace` introspects the class on each of
    a long decode's million calls)."""
    return make_event(ev.seq, ev.kind, ev.storage, nbytes, ev.phase, ev.iteration, ev.op, ev.module, ev.node)


def _storage(s: StorageInfo, nbytes: int) -> StorageInfo:
    """The storage with its block's bytes, as `_event`."""
    return make_storage_info(
        s.storage, nbytes, s.category, s.op, s.module, s.shape, s.dtype, s.phase, s.iteration, s.node
    )
