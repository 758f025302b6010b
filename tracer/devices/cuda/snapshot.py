"""Read a `torch.cuda.memory._dump_snapshot` pickle safely: plain containers and scalars only.

The file is a pickle of dicts, lists, strings and numbers (`torch.cuda.memory._snapshot()`):
`segments` (address, total_size, stream, segment_type, blocks with address/size/requested_size/state)
and `device_traces` (per device, events with action alloc / free_requested / free_completed /
segment_alloc / segment_free / segment_map / segment_unmap / snapshot / oom, addr, size, stream).
A pickle can name any importable callable, so `pickle.load` on a user's file would run code: the
unpickler here refuses every global (`find_class`), and the standard library's C unpickler then builds
only containers and scalars. No torch import.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

TRACE_ACTIONS = (
    "alloc",
    "free_requested",
    "free_completed",
    "segment_alloc",
    "segment_free",
    "segment_map",
    "segment_unmap",
    "snapshot",
    "oom",
    "user_defined",
)


class UnsafeSnapshotError(pickle.UnpicklingError):
    """The pickle names a class or function: refused, nothing of it is run."""


class _PlainUnpickler(pickle.Unpickler):
    """A pickle.Unpickler that resolves no global at all (no classes, no functions, no reducers)."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafeSnapshotError(f"refused {module}.{name}: a memory snapshot holds plain data only")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeSnapshotError("refused a persistent id: a memory snapshot holds plain data only")


def load_plain_pickle(source: str | Path | bytes | BinaryIO) -> Any:
    """Unpickle `source` (a path, bytes or a binary file) allowing plain containers and scalars only."""
    if isinstance(source, bytes):
        return _PlainUnpickler(io.BytesIO(source)).load()
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            return _PlainUnpickler(f).load()
    return _PlainUnpickler(source).load()


@dataclass(frozen=True)
class TraceEvent:
    """One allocator trace entry; `size` is the requested size for alloc/free, the segment's for segments."""

    action: str
    addr: int
    size: int
    stream: int = 0


@dataclass
class Snapshot:
    """The parts of a memory snapshot the allocator replay uses."""

    segments: list[dict[str, Any]]
    traces: list[list[TraceEvent]]
    allocator_settings: dict[str, Any] = field(default_factory=dict)

    def device_segments(self, device: int = 0) -> list[dict[str, Any]]:
        return [s for s in self.segments if int(s.get("device", 0)) == device]

    @property
    def reserved_bytes(self) -> int:
        return sum(int(s["total_size"]) for s in self.segments)

    @property
    def allocated_bytes(self) -> int:
        blocks = [b for s in self.segments for b in s["blocks"]]
        return sum(int(b["size"]) for b in blocks if b["state"] == "active_allocated")


def _event(raw: Any) -> TraceEvent:
    if not isinstance(raw, dict):
        raise ValueError("a trace entry is not a dict")
    size = int(raw.get("size", 0))
    if size < 0:
        raise ValueError(f"a trace entry has a negative size ({size})")
    return TraceEvent(str(raw["action"]), int(raw.get("addr", 0)), size, _stream(raw))


def _stream(raw: dict[str, Any]) -> int:
    value = raw.get("stream", 0)
    return int(value) if isinstance(value, int) else 0


def _segment(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or not isinstance(raw.get("blocks"), list):
        raise ValueError("a segment is not a dict with a block list")
    blocks = [
        {
            "address": int(b["address"]),
            "size": int(b["size"]),
            "requested_size": int(b.get("requested_size", 0)),
            "state": str(b["state"]),
        }
        for b in raw["blocks"]
    ]
    return {
        "address": int(raw["address"]),
        "total_size": int(raw["total_size"]),
        "stream": _stream(raw),
        "device": int(raw.get("device", 0)),
        "segment_type": str(raw.get("segment_type", "large")),
        "is_expandable": bool(raw.get("is_expandable", False)),
        "blocks": blocks,
    }


def parse_snapshot(data: Any) -> Snapshot:
    """Check and convert an unpickled snapshot (dict with `segments`, optional `device_traces`)."""
    if not isinstance(data, dict) or not isinstance(data.get("segments"), list):
        raise ValueError("not a memory snapshot: expected a dict with a 'segments' list")
    traces = data.get("device_traces") or []
    settings = data.get("allocator_settings")
    return Snapshot(
        segments=[_segment(s) for s in data["segments"]],
        traces=[[_event(e) for e in trace] for trace in traces],
        allocator_settings=settings if isinstance(settings, dict) else {},
    )


def load_snapshot(source: str | Path | bytes | BinaryIO) -> Snapshot:
    """Read a `_dump_snapshot` pickle safely (see the module docstring)."""
    return parse_snapshot(load_plain_pickle(source))
