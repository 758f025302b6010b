"""`memtrace bench`, pure: the suite's cases, one run's rows, its versioned JSON, and the baseline gates.

No torch import. A run is a `BenchRun` of `CaseResult` rows; `growth` holds a run against a baseline run
(a predicted or measured peak that grew by more than the threshold fails, and the categories that moved say
why), `errors` holds each measured case's prediction against the tolerance. Figures are compared only
where they mean the same thing: a CPU prediction depends on the host (oneDNN's ISA, the thread count, the
torch version), so each run stores the keys its figures depend on and a growth figure is compared only when
the baseline's key is the same (see docs/ci.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..core.records import Category
from ..core.specs import short_bytes

BENCH_SCHEMA = 1
FIGURES = ("allocated", "reserved")  # reserved: the CUDA caching allocator's segments (cuda only)


@dataclass(frozen=True)
class Case:
    """One benchmark: a builder (`FILE.py:FUNC`, `package.module:FUNC` or a callable), its inputs, and the
    step's recipe as `memtrace`'s flags name them. `needs` are modules it imports (skipped with the reason
    when one is missing); `tags` select cases (`ci`: the CPU-sized subset)."""

    name: str
    builder: str | Callable[..., Any]
    inputs: tuple[str, ...]
    args: dict[str, Any] = field(default_factory=dict)
    mode: str = "train"
    optimizer: str = "adam"
    loss: str | None = None
    amp: str | None = None
    dtype: str | None = None
    checkpoint: tuple[str, ...] = ()
    accumulate: int = 1
    needs: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    note: str = ""


def select(cases: Sequence[Case], names: Sequence[str], text: str | None) -> list[Case]:
    """The cases named (all when none), then those `--filter` matches: the cases tagged `text` when any
    case has that tag, else those with `text` in their name. An unknown name is an error."""
    known = {c.name for c in cases}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown case {unknown[0]!r} (known: {', '.join(sorted(known))})")
    chosen = [c for c in cases if not names or c.name in names]
    if text is None:
        return chosen
    if any(text in c.tags for c in cases):
        return [c for c in chosen if text in c.tags]
    return [c for c in chosen if text in c.name]


@dataclass(frozen=True)
class Figures:
    """A step's peaks: `allocated` (the CPU allocator's peak, or `torch.cuda.max_memory_allocated`) and on
    cuda `reserved` (`max_memory_reserved`)."""

    allocated: int
    reserved: int | None = None

    def get(self, figure: str) -> int | None:
        return self.allocated if figure == "allocated" else self.reserved


@dataclass(frozen=True)
class CaseResult:
    """One case of a run. `status` is ok, skipped (a `needs` module missing) or failed (the reason)."""

    name: str
    status: str
    reason: str = ""
    predicted: Figures | None = None
    measured: Figures | None = None
    by_category: dict[str, int] = field(default_factory=dict)  # live at the predicted peak
    dominant: str = ""  # the layer holding the most at the peak: "module (Type)"
    simulate_seconds: float | None = None
    real_seconds: float | None = None  # the real measurement: build, warm-up and measured steps
    error_gated: bool = True  # False where this host's kernels are not modelled (docs/ci.md)

    def error(self, figure: str) -> float | None:
        """(predicted - measured) / measured, None when either is missing."""
        p = self.predicted.get(figure) if self.predicted else None
        m = self.measured.get(figure) if self.measured else None
        if p is None or m is None:
            return None
        if m == 0:
            return 0.0 if p == 0 else math.inf
        return (p - m) / m


@dataclass(frozen=True)
class Machine:
    """What the figures depend on. `prediction_key`: the simulation's inputs from the host (cpu: platform,
    oneDNN ISA, ATen capability, threads, torch; cuda: torch only). `measurement_key`: the hardware
    measured on (None when nothing was measured)."""

    prediction_key: str
    measurement_key: str | None
    description: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchRun:
    device: str
    machine: Machine
    cases: tuple[CaseResult, ...]
    memtrace_version: str = ""

    def case(self, name: str) -> CaseResult | None:
        return next((c for c in self.cases if c.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": BENCH_SCHEMA,
            "kind": "memtrace-bench",
            "memtrace": self.memtrace_version,
            "device": self.device,
            "machine": {
                "prediction_key": self.machine.prediction_key,
                "measurement_key": self.machine.measurement_key,
                **self.machine.description,
            },
            "cases": [_case_json(c) for c in self.cases],
        }

    @classmethod
    def from_json(cls, data: Any) -> BenchRun:
        """A saved run; ValueError (one line) for anything else."""
        if not isinstance(data, dict) or data.get("kind") != "memtrace-bench":
            raise ValueError('not a memtrace bench result (no "kind": "memtrace-bench")')
        if data.get("schema") != BENCH_SCHEMA:
            raise ValueError(
                f"unsupported bench schema {data.get('schema')!r} (this memtrace reads {BENCH_SCHEMA})"
            )
        try:
            m = dict(data["machine"])
            machine = Machine(m.pop("prediction_key"), m.pop("measurement_key"), m)
            cases = tuple(_case_from(c) for c in data["cases"])
            return cls(data["device"], machine, cases, data.get("memtrace", ""))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed bench result: missing or wrong field {exc}") from None


def _figures_json(f: Figures | None) -> dict[str, int | None] | None:
    return None if f is None else {"allocated": f.allocated, "reserved": f.reserved}


def _case_json(c: CaseResult) -> dict[str, Any]:
    errors = {f: c.error(f) for f in FIGURES}
    return {
        "name": c.name,
        "status": c.status,
        "reason": c.reason,
        "predicted": _figures_json(c.predicted),
        "measured": _figures_json(c.measured),
        "error": {k: (v if v is None or math.isfinite(v) else None) for k, v in errors.items()}
        if c.measured
        else None,
        "error_gated": c.error_gated,
        "by_category": dict(c.by_category),
        "dominant": c.dominant,
        "simulate_seconds": c.simulate_seconds,
        "real_seconds": c.real_seconds,
    }


def _figures_from(d: dict[str, Any] | None) -> Figures | None:
    return None if d is None else Figures(int(d["allocated"]), d.get("reserved"))


def _case_from(d: dict[str, Any]) -> CaseResult:
    return CaseResult(
        name=d["name"],
        status=d["status"],
        reason=d.get("reason", ""),
        predicted=_figures_from(d.get("predicted")),
        measured=_figures_from(d.get("measured")),
        by_category=dict(d.get("by_category", {})),
        dominant=d.get("dominant", ""),
        simulate_seconds=d.get("simulate_seconds"),
        real_seconds=d.get("real_seconds"),
        error_gated=d.get("error_gated", True),
    )


@dataclass(frozen=True)
class Move:
    """One figure of one case against its baseline (or, for `kind` "error", against the measurement)."""

    case: str
    kind: str  # predicted, measured, error
    figure: str  # allocated, reserved
    baseline: float | None
    current: float | None
    change: float | None  # relative growth; for "error", the prediction's error
    failing: bool
    why: str = ""


def growth(current: BenchRun, baseline: BenchRun, threshold: float) -> list[Move]:
    """Every predicted and measured figure that moved from the baseline (or could not be compared);
    failing where it grew by more than `threshold` (a fraction)."""
    moves: list[Move] = []
    for kind, ok in (
        ("predicted", _same_prediction(current, baseline)),
        ("measured", _same_hw(current, baseline)),
    ):
        for case in current.cases:
            old = baseline.case(case.name)
            if old is None or case.status != "ok" or old.status != "ok":
                continue
            moves += _figure_moves(case, old, kind, ok, threshold)
    return moves


def _same_prediction(a: BenchRun, b: BenchRun) -> str:
    """'' when the predictions are comparable, else why not."""
    if a.device != b.device:
        return f"the baseline is for --device {b.device}"
    if a.machine.prediction_key != b.machine.prediction_key:
        return f"predicted on another host ({b.machine.prediction_key})"
    return ""


def _same_hw(a: BenchRun, b: BenchRun) -> str:
    if a.device != b.device:
        return f"the baseline is for --device {b.device}"
    if a.machine.measurement_key != b.machine.measurement_key:
        return f"measured on other hardware ({b.machine.measurement_key})"
    return ""


def _figure_moves(case: CaseResult, old: CaseResult, kind: str, skip: str, threshold: float) -> list[Move]:
    moves = []
    for figure in FIGURES:
        new_f = _figure(case, kind, figure)
        old_f = _figure(old, kind, figure)
        if new_f is None or old_f is None:
            continue
        if skip:
            moves.append(Move(case.name, kind, figure, old_f, new_f, None, False, f"not compared: {skip}"))
            continue
        if new_f == old_f:
            continue
        change = (new_f - old_f) / old_f if old_f else math.inf
        why = why_moved(old.by_category, case.by_category, old.dominant, case.dominant)
        moves.append(Move(case.name, kind, figure, old_f, new_f, change, change > threshold, why))
    return moves


def _figure(case: CaseResult, kind: str, figure: str) -> int | None:
    figures = case.predicted if kind == "predicted" else case.measured
    return figures.get(figure) if figures is not None else None


def why_moved(
    old: dict[str, int], new: dict[str, int], old_dominant: str = "", new_dominant: str = ""
) -> str:
    """The categories live at the peak that changed, largest change first, and a change of dominant layer."""
    labels = {c.value: c.value.replace("_", " ") for c in Category}
    deltas = [(k, new.get(k, 0) - old.get(k, 0)) for k in sorted({*old, *new})]
    moved = sorted((d for d in deltas if d[1]), key=lambda d: -abs(d[1]))
    parts = [f"{labels.get(k, k)} {'+' if d > 0 else '-'}{short_bytes(abs(d))}" for k, d in moved[:3]]
    if old_dominant and new_dominant and old_dominant != new_dominant:
        parts.append(f"dominant layer {old_dominant} -> {new_dominant}")
    return ", ".join(parts) or "no category moved at the peak"


def errors(current: BenchRun, tolerance: float) -> list[Move]:
    """Each measured figure's prediction error; failing beyond `tolerance` where the case is gated."""
    moves = []
    for case in current.cases:
        for figure in FIGURES:
            err = case.error(figure)
            if err is None:
                continue
            fails = case.error_gated and abs(err) > tolerance
            why = "" if case.error_gated else "not gated: this host's kernels are not modelled"
            p = case.predicted.get(figure) if case.predicted else None
            m = case.measured.get(figure) if case.measured else None
            moves.append(Move(case.name, "error", figure, m, p, err, fails, why))
    return moves


def failed_cases(current: BenchRun) -> list[CaseResult]:
    return [c for c in current.cases if c.status == "failed"]


def merged(baseline: BenchRun | None, current: BenchRun) -> BenchRun:
    """The baseline updated with this run's cases (cases not run keep their baseline rows)."""
    if baseline is None or _same_prediction(current, baseline):
        return current
    names = {c.name for c in current.cases}
    kept = tuple(c for c in baseline.cases if c.name not in names)
    return replace(current, cases=kept + current.cases)


def total_seconds(cases: Iterable[CaseResult]) -> float:
    return sum((c.simulate_seconds or 0.0) + (c.real_seconds or 0.0) for c in cases)
