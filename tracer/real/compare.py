"""`memtrace compare RESULT.json REAL`: a saved prediction held against a real GPU run (pure: no torch).

REAL is a `torch.cuda.memory._dump_snapshot` pickle, read with a restricted unpickler (plain containers and
scalars only: nothing in the file can run), whose trace is replayed through the allocator model from the
state it starts in to get the run's allocated and reserved peaks; or a monitor JSON (`memtrace.monitor`
history rows with `measured_peak_bytes` and `reserved_bytes`). The largest real allocations are listed
with the innermost frames that name them, beside the predicted largest tensors at the peak.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.errors import MemtraceError, first_line
from ..core.records import Result
from ..devices.cuda.snapshot import load_plain_pickle, parse_snapshot
from ..devices.cuda.snapshot_replay import replay_snapshot
from .verify import Check


@dataclass(frozen=True)
class RealAllocation:
    nbytes: int
    where: str  # the innermost frames of the allocation's stack, outermost last


@dataclass(frozen=True)
class Comparison:
    figures: tuple[Check, ...]  # predicted against the real run's figure
    real_largest: tuple[RealAllocation, ...]
    unmatched_predicted: tuple[int, ...]  # predicted largest tensors (block bytes) no real allocation matches
    unmatched_real: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "figures": [f.to_json() for f in self.figures],
            "real_largest": [asdict(a) for a in self.real_largest],
            "unmatched_predicted": list(self.unmatched_predicted),
            "unmatched_real": list(self.unmatched_real),
        }


def load_result(path: Path) -> Result:
    """A saved result (`--output`), or the prediction a monitor file (`MemoryMonitor.to_json`) holds."""
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "history" in data and isinstance(data.get("prediction"), dict):
            data = data["prediction"]
        return Result.from_json(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MemtraceError(f"{path} is not a memtrace result (memtrace ... --output FILE): {exc}") from exc


def compare(result: Result, real: Path, top: int = 5) -> Comparison:
    if real.suffix == ".json":
        return _with_monitor(result, real)
    try:
        raw = load_plain_pickle(real)
        replayed = replay_snapshot(parse_snapshot(raw))
    except Exception as exc:  # refused globals, a truncated trace freeing what it never allocated, ...
        raise MemtraceError(f"{real} is not a readable memory snapshot: {first_line(exc)}") from exc
    figures = [
        Check(
            "allocated peak",
            result.all_steps_peak_bytes,
            replayed.allocated_peak_bytes,
        )
    ]
    if result.cuda is not None:
        figures.append(Check("reserved peak", result.cuda.reserved_peak_bytes, replayed.reserved_peak_bytes))
    largest = _largest(raw, top)
    predicted = [t.nbytes for t in result.peak.top_tensors]
    real_sizes = [a.nbytes for a in largest]
    return Comparison(
        tuple(figures),
        tuple(largest),
        tuple(p for p in predicted if not _near(p, real_sizes)),
        tuple(r for r in real_sizes if not _near(r, predicted)),
    )


def _near(size: int, others: list[int]) -> bool:
    """Sizes that agree within the caching allocator's 512-byte rounding."""
    return any(abs(size - o) < 512 for o in others)


def _largest(raw: Any, top: int) -> list[RealAllocation]:
    traces = raw.get("device_traces") or [[]] if isinstance(raw, dict) else [[]]
    allocs = [e for e in (traces[0] if traces else []) if isinstance(e, dict) and e.get("action") == "alloc"]
    allocs.sort(key=lambda e: -int(e.get("size", 0)))
    return [RealAllocation(int(e.get("size", 0)), _where(e.get("frames") or [])) for e in allocs[:top]]


def _where(frames: list[Any]) -> str:
    """The first frames outside torch's own files (the user's module and the op that allocated)."""
    named = [f for f in frames if isinstance(f, dict)]
    own = [f for f in named if "/torch/" not in str(f.get("filename", ""))] or named
    return " <- ".join(
        f"{f.get('name', '?')} ({Path(str(f.get('filename', ''))).name}:{f.get('line', '?')})"
        for f in own[:3]
    )


def _with_monitor(result: Result, path: Path) -> Comparison:
    try:
        rows = json.loads(path.read_text())["history"]
        measured_rows = [r for r in rows if r["measured_peak_bytes"] is not None]  # null: not measured (cpu)
        if not measured_rows:
            raise MemtraceError(f"{path} holds no measured row (a monitor off CUDA measures nothing)")
        measured = max(int(r["measured_peak_bytes"]) for r in measured_rows)
        reserved = max(int(r.get("reserved_bytes") or 0) for r in measured_rows)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MemtraceError(f"{path} is not a memtrace monitor file (history rows): {exc}") from exc
    figures = [Check("allocated peak", result.all_steps_peak_bytes, measured)]
    if result.cuda is not None and reserved:
        figures.append(Check("reserved peak", result.cuda.reserved_peak_bytes, reserved))
    return Comparison(tuple(figures), (), (), ())
