"""The predicted step as a `torch.cuda.memory._snapshot()` dict, for PyTorch's memory_viz (pure: no torch).

`segments`: the allocator model's segments after the simulated steps, each block with frames naming the
module and op that made its tensor; `device_traces`: every request in program order, as the allocator's
trace records them (`segment_alloc`/`segment_free` where the model asks the device, `alloc`, then
`free_requested` + `free_completed` for each free, one stream), from the storages that exist before the step
(parameters, inputs) onward. Sizes in the trace are requested sizes, as in a real snapshot; `time_us` is
the event's index. The keys are those of PyTorch 2.13's snapshots (`_Segment`, `_Block`, `_TraceEntry`
in the `torch.cuda.memory._snapshot` documentation, plus the fields real snapshots carry beside them).
Written with `pickle.dump`, as `torch.cuda.memory._dump_snapshot` writes it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..core.errors import MemtraceError
from ..core.records import Kind, StorageInfo, Trace
from ..devices.cuda.allocator import AllocatorConfig
from ..devices.cuda.served import Served, ServedTrace, serve

if TYPE_CHECKING:
    from .saved import Saved

Frame = dict[str, Any]


def frames(info: StorageInfo) -> list[Frame]:
    """Where a storage was made, as memory_viz shows frames (`file:line:name`): the module, then the op;
    a second frame says what the tensor is and in which phase and step it was made."""
    module = info.module or "(model)"
    what = f"{info.category.value} made in {info.phase.value}, step {info.iteration + 1}"
    return [
        {"filename": module, "line": 0, "name": info.op or info.category.value},
        {"filename": "memtrace", "line": 0, "name": what},
    ]


def _entry(action: str, addr: int, size: int, time: int, where: list[Frame]) -> dict[str, Any]:
    return {
        "action": action,
        "addr": addr,
        "size": size,
        "stream": 0,
        "time_us": time,
        "frames": where,
        "pool_id": (0, 0),  # the default pool (documented for 2.13's trace entries; older ones lack it)
    }


def _entries(served: Served, kind: Kind, info: StorageInfo, nbytes: int, time: int) -> list[dict[str, Any]]:
    out = [_entry(a, addr, size, time, []) for a, addr, size in served.segment_events]
    if not served.addr:  # a zero-byte storage gets no block: nothing to trace
        return out
    where = frames(info)
    if kind is Kind.ALLOC:
        return [*out, _entry("alloc", served.addr, nbytes, time, where)]
    return [
        *out,
        _entry("free_requested", served.addr, nbytes, time, where),
        _entry("free_completed", served.addr, nbytes, time, where),
    ]


def device_trace(trace: Trace, served: Any) -> list[dict[str, Any]]:
    """The allocator's trace entries for every request of the run (the baseline first)."""
    out: list[dict[str, Any]] = []
    for sid, s in zip(trace.baseline, served.baseline, strict=True):
        info = trace.storages[sid]
        out += _entries(s, Kind.ALLOC, info, info.nbytes, 0)
    for i, (ev, s) in enumerate(zip(trace.events, served.events, strict=True)):
        out += _entries(s, ev.kind, trace.storages[ev.storage], ev.nbytes, i + 1)
    return out


def _segment(seg: dict[str, Any], trace: Trace, owners: dict[int, int]) -> dict[str, Any]:
    blocks = []
    for b in seg["blocks"]:
        sid = owners.get(b["address"]) if b["state"] == "active_allocated" else None
        where = frames(trace.storages[sid]) if sid is not None else []
        blocks.append({**b, "frames": where})
    return {**seg, "device": 0, "segment_pool_id": (0, 0), "frames": [], "blocks": blocks}


def memory_snapshot(
    trace: Trace, config: AllocatorConfig | None = None, served: ServedTrace | None = None
) -> dict[str, Any]:
    """The run as `torch.cuda.memory._snapshot()` would give it after the simulated steps; `served`: the
    trace's requests as the allocator served them, when the run kept them (else replayed here)."""
    served = served if served is not None else serve(trace, config)
    return {
        "segments": [_segment(s, trace, served.owners) for s in served.segments],
        "device_traces": [device_trace(trace, served)],
        "allocator_settings": {},
    }


def write_snapshot(snapshot: dict[str, Any], path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(snapshot, f)


def render(saved: Saved, out: Path | IO[bytes]) -> None:
    """The snapshot of a fresh cuda run (its trace and its one placement), pickled to `out`."""
    run = saved.run
    if run is None or run.placed is None:
        raise MemtraceError("--export-snapshot needs a fresh run's trace on --device cuda")
    snapshot = memory_snapshot(run.trace, run.placed.config, run.placed.served)
    if isinstance(out, Path):
        write_snapshot(snapshot, out)
    else:
        pickle.dump(snapshot, out)
