"""The simulated run as a Chrome / Perfetto trace (Trace Event Format JSON; pure: no torch import).

Opens in ui.perfetto.dev and chrome://tracing. One process, "memtrace (simulated)"; time is the event index
(1 us per allocation or free, not wall time). Tracks: a counter "memory" with bytes live per category after
each event (stacked, as in the timeline plot), a counter "reserved" on cuda; the ops as slices (consecutive
events of one op in one module form one slice), the phases as slices on their own thread, and the peak of
each step as an instant event.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..core.errors import MemtraceError
from ..core.records import Category, Event, Kind, Result, Trace

if TYPE_CHECKING:
    from .saved import Saved

PID = 1
OPS_TID, PHASES_TID = 1, 2


def _meta(name: str, tid: int | None, value: str) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "ph": "M", "pid": PID, "args": {"name": value}}
    if tid is not None:
        row["tid"] = tid
    return row


def _runs(events: Sequence[Event], key: Any) -> Iterator[tuple[int, int]]:
    """[start, end) runs of consecutive events with the same key."""
    start = 0
    for i in range(1, len(events) + 1):
        if i == len(events) or key(events[i]) != key(events[start]):
            yield start, i
            start = i


def counters(trace: Trace, reserved: Sequence[int] = ()) -> Iterator[dict[str, Any]]:
    live = {c: 0 for c in Category}
    for sid in trace.baseline:
        live[trace.storages[sid].category] += trace.storages[sid].nbytes
    for i, ev in enumerate(trace.events):
        cat = trace.storages[ev.storage].category
        live[cat] += ev.nbytes if ev.kind is Kind.ALLOC else -ev.nbytes
        args = {c.value: live[c] for c in Category}
        yield {"name": "memory", "ph": "C", "ts": i, "pid": PID, "args": args}
        if reserved:
            yield {"name": "reserved", "ph": "C", "ts": i, "pid": PID, "args": {"reserved": reserved[i]}}


def slices(trace: Trace) -> Iterator[dict[str, Any]]:
    events = trace.events
    for start, end in _runs(events, lambda e: (e.op, e.module, e.phase, e.iteration)):
        ev = events[start]
        args = {"module": ev.module or "(model)", "phase": ev.phase.value, "step": ev.iteration + 1}
        yield {
            "name": ev.op or "-",
            "cat": "op",
            "ph": "X",
            "ts": start,
            "dur": end - start,
            "pid": PID,
            "tid": OPS_TID,
            "args": args,
        }
    for start, end in _runs(events, lambda e: (e.phase, e.iteration)):
        ev = events[start]
        yield {
            "name": f"{ev.phase.value} (step {ev.iteration + 1})",
            "cat": "phase",
            "ph": "X",
            "ts": start,
            "dur": end - start,
            "pid": PID,
            "tid": PHASES_TID,
        }


def chrome_trace(trace: Trace, result: Result, reserved: Sequence[int] = ()) -> dict[str, Any]:
    """`trace` with each storage's bytes as the device counts them (the placed trace on cuda)."""
    peak = next((i for i, e in enumerate(trace.events) if e.seq == result.peak.seq), None)
    rows: list[dict[str, Any]] = [
        _meta("process_name", None, f"memtrace (simulated): {result.model.name} on {result.device}"),
        _meta("thread_name", OPS_TID, "ops"),
        _meta("thread_name", PHASES_TID, "phases"),
        *counters(trace, reserved),
        *slices(trace),
    ]
    if peak is not None:
        rows.append(
            {
                "name": f"peak {result.peak.bytes} B",
                "ph": "i",
                "s": "p",
                "ts": peak,
                "pid": PID,
                "tid": OPS_TID,
                "args": {"op": result.peak.op, "module": result.peak.module},
            }
        )
    return {"traceEvents": rows, "displayTimeUnit": "ns", "otherData": {"time": "event index, 1 us each"}}


def write_trace(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")


def render(saved: Saved, out: Path | IO[str]) -> None:
    """The Chrome trace of a fresh run: its trace as the device counts it (placed on cuda, with reserved)."""
    run = saved.run
    if run is None:
        raise MemtraceError("--export-trace needs a fresh run's trace")
    reserved = run.placed.reserved if run.placed is not None else ()
    data = chrome_trace(run.device_trace, saved.result, reserved)
    if isinstance(out, Path):
        write_trace(data, out)
    else:
        out.write(json.dumps(data, separators=(",", ":")) + "\n")
