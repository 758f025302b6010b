"""The steady-state step as a timeline: bytes live per category after each event, phase bands, the peak's
place, compacted so that a saved result stays small whatever the model (pure: no torch import).

The x axis is the step's events (allocations and frees in program order, 0 = the step's first). Above
`MAX_POINTS` events the timeline keeps, per bucket of consecutive events, the one with the most and the one
with the fewest bytes live, plus the peak and every phase edge: the envelope of the curve and its peak are
exact, and the JSON holds at most about `MAX_POINTS` points (about 0.5 MB) for any step.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core.records import Category, Event, Kind, Phase, PhaseBand, StepTimeline, StorageInfo, Trace

MAX_POINTS = 4000


def step_range(trace: Trace, iteration: int, spans: Sequence[tuple[int, int]] = ()) -> range:
    """The indexes of the iteration's events in the trace (they are consecutive); `spans`: the trace's
    runs of one iteration and phase (`peaks.runs`), where the caller has them."""
    if spans:
        mine = [(start, end) for start, end in spans if trace.events[start].iteration == iteration]
        return range(mine[0][0], mine[-1][1]) if mine else range(0)
    first = next((i for i, e in enumerate(trace.events) if e.iteration == iteration), None)
    if first is None:
        return range(0)
    end = first
    while end < len(trace.events) and trace.events[end].iteration == iteration:
        end += 1
    return range(first, end)


def bands(events: Sequence[Event]) -> tuple[PhaseBand, ...]:
    """Runs of consecutive events of one phase, as [start, end) indexes."""
    runs: list[PhaseBand] = []
    start, n = 0, len(events)
    while start < n:
        phase = events[start].phase
        end = start + 1
        while end < n and events[end].phase is phase:
            end += 1
        runs.append(PhaseBand(phase, start, end))
        start = end
    return tuple(runs)


def compact(totals: Sequence[int], keep: set[int], max_points: int = MAX_POINTS) -> list[int]:
    """The indexes to keep: all when few; else each bucket's highest and lowest point, plus `keep`."""
    n = len(totals)
    if n <= max_points:
        return list(range(n))
    buckets = max(1, (max_points - len(keep)) // 2)
    width = -(-n // buckets)
    kept = {i for i in keep if 0 <= i < n}
    for start in range(0, n, width):
        chunk = range(start, min(start + width, n))
        kept.add(max(chunk, key=totals.__getitem__))  # the first highest, as the peak is the first
        kept.add(min(chunk, key=totals.__getitem__))
    return sorted(kept)


def _live_before(trace: Trace, first: int) -> dict[Category, int]:
    live = {c: 0 for c in Category}
    storages = trace.storages
    for sid in trace.baseline:
        info = storages[sid]
        live[info.category] += info.nbytes
    _apply(live, storages, trace.events[:first])
    return live


def _apply(live: dict[Category, int], storages: dict[int, StorageInfo], events: Sequence[Event]) -> None:
    """Move each category's live bytes by the events."""
    alloc = Kind.ALLOC
    for ev in events:
        live[storages[ev.storage].category] += ev.nbytes if ev.kind is alloc else -ev.nbytes


def step_timeline(
    trace: Trace,
    iteration: int,
    peak_seq: int,
    reserved: Sequence[int] = (),
    max_points: int = MAX_POINTS,
    live_after: Sequence[int] = (),
    spans: Sequence[tuple[int, int]] = (),
) -> StepTimeline | None:
    """The timeline of one iteration (None when it made no event). `reserved` holds the allocator's
    reserved bytes after every trace event (cuda), or nothing; `peak_seq` is the reported peak's event;
    `live_after` the bytes live after every trace event (`peaks.timeline`'s) and `spans` the trace's runs
    (`peaks.runs`), where the caller has them."""
    span = step_range(trace, iteration, spans)
    if not span:
        return None
    events = trace.events[span.start : span.stop]
    live = _live_before(trace, span.start)
    if live_after:
        totals = live_after[span.start : span.stop]
    else:
        total, totals = sum(live.values()), []
        for ev in events:
            total += ev.nbytes if ev.kind is Kind.ALLOC else -ev.nbytes
            totals.append(total)
    runs = bands(events)
    peak = next((i for i, e in enumerate(events) if e.seq == peak_seq), -1)
    edges = {b.start for b in runs} | {b.end - 1 for b in runs} | {peak}
    kept = compact(totals, edges, max_points)
    return StepTimeline(
        events=len(events),
        index=tuple(kept),
        by_category=_series(trace, events, live, kept),
        reserved=tuple(reserved[span.start + i] for i in kept) if reserved else (),
        bands=runs,
        peak_index=peak,
    )


def _series(
    trace: Trace, events: Sequence[Event], live: dict[Category, int], kept: Sequence[int]
) -> dict[Category, tuple[int, ...]]:
    """Each category's bytes live after each kept event, from `live` before the first (the categories that
    are never live left out)."""
    series: dict[Category, list[int]] = {c: [] for c in Category}
    appends = [(c, series[c].append) for c in Category]  # the enum walked once, not per point
    prev, storages = 0, trace.storages
    for i in kept:
        _apply(live, storages, events[prev : i + 1])
        prev = i + 1
        for c, append in appends:
            append(live[c])
    return {c: tuple(v) for c, v in series.items() if any(v)}


def phase_at(timeline: StepTimeline, index: int) -> Phase | None:
    """The phase of the event at `index`."""
    return next((b.phase for b in timeline.bands if b.start <= index < b.end), None)
