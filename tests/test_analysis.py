"""The timeline and peak on hand-written event streams (no torch)."""

from __future__ import annotations

import random

import pytest

from memtrace.tracer.analysis import peaks as analysis
from memtrace.tracer.analysis.timeline import bands, step_timeline
from memtrace.tracer.core.records import (
    Category,
    Event,
    Kind,
    Phase,
    PhaseBand,
    PhasePeak,
    StorageInfo,
    Trace,
)


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


def test_sizes_are_the_traces_own() -> None:
    """No rounding in the analysis: on cuda the placed trace already holds each storage's block."""
    tr = _trace({}, [("alloc", 2, 1, Category.TEMPORARY, 1), ("alloc", 3, 513, Category.TEMPORARY, 1)])
    assert analysis.step_peak(tr, 1).bytes == 1 + 513


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


def _phased(steps: list[tuple[str, int, int, Phase, str, str]]) -> Trace:
    """Events of iteration 0: (kind, storage, bytes, phase, op, module)."""
    storages: dict[int, StorageInfo] = {}
    events = []
    for seq, (kind, sid, nbytes, phase, op, module) in enumerate(steps):
        info = StorageInfo(sid, nbytes, Category.TEMPORARY, op, module, (nbytes,), "uint8", phase, 0)
        storages.setdefault(sid, info)
        events.append(Event(seq, Kind(kind), sid, nbytes, phase, 0, op, module))
    return Trace(tuple(events), storages, (), 1)


def test_a_phase_peak_names_the_op_that_allocated_not_a_storage_freed() -> None:
    """The autocast cache freed as the loss phase starts (made by a forward op) is not the loss's peak; a loss
    phase that only frees has no op of its own."""
    fwd, loss = Phase.FORWARD, Phase.LOSS
    cast = ("alloc", 1, 400, fwd, "_to_copy", "block.attn")
    freed = ("free", 1, 400, loss, "_to_copy", "block.attn")
    tr = _phased([cast, ("alloc", 2, 300, fwd, "mm", "head"), freed, ("alloc", 3, 50, loss, "nll", "")])
    rows = {p.phase: p for p in analysis.phase_peaks(tr, 0)}
    assert (rows[loss].op, rows[loss].module, rows[loss].bytes) == ("nll", "", 350)
    only_frees = {p.phase: p for p in analysis.phase_peaks(_phased([cast, freed]), 0)}
    assert (only_frees[loss].op, only_frees[loss].module, only_frees[loss].bytes) == ("", "", 0)
    assert (only_frees[fwd].op, only_frees[fwd].bytes) == ("_to_copy", 400)


def test_the_loss_owns_what_the_loss_phase_and_loss_functions_make() -> None:
    def info(module: str, phase: Phase, nbytes: int = 8, op: str = "op") -> StorageInfo:
        return StorageInfo(
            nbytes, nbytes, Category.TEMPORARY, op, module, (2, nbytes // 2), "float32", phase, 0
        )

    assert analysis.owner(info("", Phase.LOSS)) == analysis.LOSS
    assert analysis.owner(info(f"{analysis.LOSS}:cross_entropy", Phase.FORWARD)) == analysis.LOSS
    assert analysis.owner(info("", Phase.FORWARD)) == ""  # the root's own code, not a loss
    assert analysis.owner(info("head", Phase.LOSS)) == "head"
    made = [info(f"{analysis.LOSS}:cross_entropy", Phase.FORWARD, 64, "_log_softmax"), info("", Phase.LOSS)]
    assert analysis.loss_type(made) == "cross_entropy: _log_softmax fp32 2x32"


def _random_trace(seed: int) -> Trace:
    """Two iterations of random allocations and frees in runs of phases, with a baseline: equal levels
    repeat (sizes from a few values), so 'the first highest' is tested."""
    rng = random.Random(seed)
    phases = [Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER, Phase.PREFILL, Phase.DECODE, Phase.LOSS]
    cats = [Category.ACTIVATION, Category.TEMPORARY, Category.KV_CACHE, Category.GRADIENT]
    storages = {1: StorageInfo(1, 64, Category.PARAMETER, "", "w", (64,), "uint8", Phase.SETUP, 0)}
    events: list[Event] = []
    live: list[int] = []
    sid = 1
    for it in (0, 1):
        for _ in range(rng.randrange(3, 8)):
            phase = rng.choice(phases)
            for _ in range(rng.randrange(1, 12)):
                if live and rng.random() < 0.45:
                    gone = live.pop(rng.randrange(len(live)))
                    n, module = storages[gone].nbytes, storages[gone].module
                    events.append(Event(len(events), Kind.FREE, gone, n, phase, it, "", module))
                    continue
                sid += 1
                n, module = rng.choice((8, 16, 24)), rng.choice(("a", "b", ""))
                storages[sid] = StorageInfo(sid, n, rng.choice(cats), "op", module, (n,), "uint8", phase, it)
                events.append(Event(len(events), Kind.ALLOC, sid, n, phase, it, "op", module))
                live.append(sid)
    return Trace(tuple(events), storages, (1,), 2)


def _phase_peaks_event_by_event(trace: Trace, iteration: int) -> tuple[PhasePeak, ...]:
    """`phase_peaks` as it was written before its runs: event by event."""
    tl = analysis.timeline(trace)
    after, allocs, anything = tl.live_after, dict[Phase, int](), dict[Phase, int]()
    for i, ev in enumerate(tl.events):
        if ev.iteration != iteration:
            continue
        if anything.get(ev.phase) is None or after[i] > after[anything[ev.phase]]:
            anything[ev.phase] = i
        if ev.kind is Kind.ALLOC and (allocs.get(ev.phase) is None or after[i] > after[allocs[ev.phase]]):
            allocs[ev.phase] = i
    rows = []
    for phase in analysis._REPORTED:
        if phase in allocs:
            ev = tl.events[allocs[phase]]
            rows.append(PhasePeak(phase, after[allocs[phase]], ev.op, ev.module))
        elif phase in anything:
            rows.append(PhasePeak(phase, after[anything[phase]], "", ""))
    return tuple(rows)


def _peak_index_event_by_event(tl: analysis.Timeline, iteration: int) -> int | None:
    """The first event of the iteration at which live bytes are highest, event by event."""
    best: int | None = None
    for i, ev in enumerate(tl.events):
        if ev.iteration == iteration and (best is None or tl.live_after[i] > tl.live_after[best]):
            best = i
    return best


@pytest.mark.parametrize("seed", range(40))
def test_one_pass_analysis_is_the_event_by_event_one(seed: int) -> None:
    """The passes `compose` shares (one timeline, the runs, each iteration's peak index, the live set at the
    peak) give what each function gives alone, event by event."""
    trace = _random_trace(seed)
    tl = analysis.timeline(trace)
    spans = analysis.runs(trace.events)
    assert [i for s, e in spans for i in range(s, e)] == list(range(len(trace.events)))
    at = analysis.peak_indexes(tl, spans)
    for it in (0, 1):
        assert at.get(it) == _peak_index_event_by_event(tl, it)
        peak, live = analysis.peak_and_live(trace, it, tl, at)
        assert peak == analysis.step_peak(trace, it)
        assert live == analysis.live_at_peak(trace, peak)
        assert analysis.peak_levels(trace, 2)[it] == peak.bytes
        assert analysis.phase_peaks(trace, it, tl, spans) == _phase_peaks_event_by_event(trace, it)
        alone = step_timeline(trace, it, peak.seq, max_points=6)
        shared = step_timeline(trace, it, peak.seq, max_points=6, live_after=tl.live_after, spans=spans)
        assert shared == alone
    assert bands(trace.events) == tuple(
        PhaseBand(ev.phase, i, j)
        for i, j in _phase_runs([ev.phase for ev in trace.events])
        for ev in trace.events[i : i + 1]
    )


def _phase_runs(phases: list[Phase]) -> list[tuple[int, int]]:
    edges = [i for i in range(1, len(phases)) if phases[i] is not phases[i - 1]]
    starts = [0, *edges]
    return list(zip(starts, [*edges, len(phases)], strict=True)) if phases else []
