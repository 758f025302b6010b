"""The timeline and peak on hand-written event streams (no torch)."""

from __future__ import annotations

from memtrace.tracer import analysis
from memtrace.tracer.records import Category, Event, Kind, Phase, StorageInfo, Trace


def _info(sid: int, nbytes: int, cat: Category, module: str = "m") -> StorageInfo:
    return StorageInfo(sid, nbytes, cat, "op", module, (nbytes,), "uint8", Phase.FORWARD, 0)


def _trace(
    baseline: dict[int, tuple[int, Category]], steps: list[tuple[str, int, int, Category, int]]
) -> Trace:
    storages = {sid: _info(sid, n, c) for sid, (n, c) in baseline.items()}
    events = []
    for seq, (kind, sid, nbytes, cat, it) in enumerate(steps):
        storages.setdefault(sid, _info(sid, nbytes, cat))
        events.append(Event(seq, Kind(kind), sid, nbytes, Phase.FORWARD, it, "op", "m"))
    return Trace(tuple(events), storages, tuple(baseline), 2)


def test_peak_is_baseline_plus_largest_rise() -> None:
    tr = _trace(
        {1: (100, Category.PARAMETER)},
        [
            ("alloc", 2, 50, Category.ACTIVATION, 1),
            ("alloc", 3, 30, Category.TEMPORARY, 1),
            ("free", 3, 30, Category.TEMPORARY, 1),
            ("alloc", 4, 20, Category.TEMPORARY, 1),
            ("free", 2, 50, Category.ACTIVATION, 1),
        ],
    )
    peak = analysis.step_peak(tr, 1)
    assert peak.bytes == 180
    assert peak.seq == 1
    assert peak.by_category[Category.PARAMETER] == 100
    assert peak.by_category[Category.ACTIVATION] == 50
    assert peak.by_category[Category.TEMPORARY] == 30


def test_peak_one_byte_either_side() -> None:
    steps = [("alloc", 2, 10, Category.TEMPORARY, 1), ("free", 2, 10, Category.TEMPORARY, 1)]
    steps += [("alloc", 3, 11, Category.TEMPORARY, 1), ("free", 3, 11, Category.TEMPORARY, 1)]
    tr = _trace({}, steps)
    assert analysis.step_peak(tr, 1).bytes == 11
    steps[2] = ("alloc", 3, 9, Category.TEMPORARY, 1)
    steps[3] = ("free", 3, 9, Category.TEMPORARY, 1)
    assert analysis.step_peak(_trace({}, steps), 1).bytes == 10


def test_peak_only_counts_the_requested_iteration() -> None:
    tr = _trace(
        {},
        [
            ("alloc", 2, 500, Category.TEMPORARY, 0),
            ("free", 2, 500, Category.TEMPORARY, 0),
            ("alloc", 3, 40, Category.TEMPORARY, 1),
        ],
    )
    assert analysis.step_peak(tr, 1).bytes == 40
    assert analysis.step_peak(tr, 0).bytes == 500


def test_rounding_applies_per_allocation() -> None:
    tr = _trace({}, [("alloc", 2, 1, Category.TEMPORARY, 1), ("alloc", 3, 513, Category.TEMPORARY, 1)])
    assert analysis.step_peak(tr, 1, lambda n: (n + 511) // 512 * 512).bytes == 512 + 1024


def test_live_at_and_layers() -> None:
    tr = _trace(
        {1: (100, Category.PARAMETER)},
        [("alloc", 2, 50, Category.ACTIVATION, 1), ("free", 2, 50, Category.ACTIVATION, 1)],
    )
    assert analysis.live_at(tr, 0) == {1, 2}
    assert analysis.live_at(tr, 1) == {1}
    peak = analysis.step_peak(tr, 1)
    layers = analysis.layers_at_peak(tr, peak, {"m": "Linear"})
    assert layers[0].module == "m" and layers[0].bytes == 150 and layers[0].type == "Linear"


def test_phase_peaks_and_totals() -> None:
    tr = _trace({}, [("alloc", 2, 50, Category.ACTIVATION, 1), ("alloc", 3, 7, Category.GRADIENT, 1)])
    (row,) = analysis.phase_peaks(tr, 1)
    assert row.phase is Phase.FORWARD and row.bytes == 57
    totals = analysis.category_totals(tr, 1)
    assert totals[Category.ACTIVATION] == 50 and totals[Category.GRADIENT] == 7
