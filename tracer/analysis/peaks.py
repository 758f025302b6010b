"""Pure functions over a Trace: the timeline, the peak and what is live at it, per-phase peaks.

No torch import. Sizes are the trace's own: on cuda, the placed trace's blocks (`placed.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate

from ..core.records import (
    LOSS,
    OPTIMIZER_STEP,
    Category,
    Event,
    Kind,
    LayerShare,
    Peak,
    Phase,
    PhasePeak,
    StorageInfo,
    TensorRow,
    Trace,
)


@dataclass(frozen=True)
class Timeline:
    """Bytes live after each event, starting from the baseline."""

    baseline: int
    events: tuple[Event, ...]
    live_after: tuple[int, ...]


def timeline(trace: Trace) -> Timeline:
    base = sum(trace.storages[s].nbytes for s in trace.baseline)
    alloc = Kind.ALLOC
    deltas = [ev.nbytes if ev.kind is alloc else -ev.nbytes for ev in trace.events]
    return Timeline(base, trace.events, tuple(accumulate(deltas, initial=base))[1:])


def runs(events: Sequence[Event]) -> list[tuple[int, int]]:
    """The [start, end) indexes of each run of consecutive events of one iteration and one phase."""
    found: list[tuple[int, int]] = []
    start, n = 0, len(events)
    while start < n:
        first = events[start]
        phase, iteration = first.phase, first.iteration
        end = start + 1
        while end < n:
            ev = events[end]
            if ev.phase is not phase or ev.iteration != iteration:
                break
            end += 1
        found.append((start, end))
        start = end
    return found


def peak_indexes(tl: Timeline, spans: Sequence[tuple[int, int]] | None = None) -> dict[int, int]:
    """Per iteration, the index of the first event at which live bytes are highest among its events, in one
    pass; `spans`: the trace's `runs`, when known."""
    after, events = tl.live_after, tl.events
    best: dict[int, int] = {}
    for start, end in runs(events) if spans is None else spans:
        high = max(after[start:end])
        i = after.index(high, start, end)
        it = events[start].iteration
        j = best.get(it)
        if j is None or high > after[j]:
            best[it] = i
    return best


def peak_levels(
    trace: Trace, iterations: int, spans: Sequence[tuple[int, int]] | None = None
) -> tuple[int, ...]:
    """Each iteration's peak bytes, as `step_peak(trace, it).bytes` gives them (the baseline where an
    iteration made no event), without what is live at them; `spans`: the trace's `runs`, when known (the
    placed trace's are its requested trace's: the same events, in the same order)."""
    tl = timeline(trace)
    at = peak_indexes(tl, spans)
    return tuple(tl.live_after[at[it]] if it in at else tl.baseline for it in range(iterations))


def live_at(trace: Trace, index: int) -> set[int]:
    """The storages live just after event `index` (the baseline included)."""
    live = set(trace.baseline)
    for ev in trace.events[: index + 1]:
        if ev.kind is Kind.ALLOC:
            live.add(ev.storage)
        else:
            live.discard(ev.storage)
    return live


def live_at_peak(trace: Trace, peak: Peak) -> set[int]:
    """The storages live at a peak found by step_peak (the baseline when the step allocated nothing)."""
    index = next((i for i, e in enumerate(trace.events) if e.seq == peak.seq), None)
    return live_at(trace, index) if index is not None else set(trace.baseline)


def by_category(storages: Iterable[StorageInfo]) -> dict[Category, int]:
    sums = {c: 0 for c in Category}
    for s in storages:
        sums[s.category] += s.nbytes
    return sums


def top_tensors(storages: Iterable[StorageInfo], n: int = 5) -> tuple[TensorRow, ...]:
    rows = sorted(storages, key=lambda s: (-s.nbytes, s.storage))[:n]
    return tuple(TensorRow(s.nbytes, s.category, s.shape, s.dtype, s.op, s.module) for s in rows)


def step_peak(trace: Trace, iteration: int) -> Peak:
    """The peak of one iteration of the step, and what is live at that moment."""
    return peak_and_live(trace, iteration)[0]


def peak_and_live(
    trace: Trace, iteration: int, tl: Timeline | None = None, at: dict[int, int] | None = None
) -> tuple[Peak, set[int]]:
    """`step_peak`, and the storages live at it (`live_at_peak`'s set), from the trace's timeline and
    `peak_indexes` where the caller has them."""
    tl = tl or timeline(trace)
    idx = (at if at is not None else peak_indexes(tl)).get(iteration)
    if idx is None:
        infos = [trace.storages[s] for s in trace.baseline]
        peak = Peak(
            tl.baseline,
            -1,
            Phase.SETUP,
            iteration,
            "",
            "",
            by_category(infos),
            top_tensors(infos),
        )
        return peak, set(trace.baseline)
    ev = tl.events[idx]
    live = live_at(trace, idx)
    infos = [trace.storages[s] for s in live]
    peak = Peak(
        bytes=tl.live_after[idx],
        seq=ev.seq,
        phase=ev.phase,
        iteration=ev.iteration,
        op=ev.op,
        module=ev.module,
        by_category=by_category(infos),
        top_tensors=top_tensors(infos),
        token_index=token_index(trace, ev),
    )
    return peak, live


def token_index(trace: Trace, ev: Event) -> int | None:
    """The decode step an event of the decode phase falls in (1: the first after the prefill), else None."""
    if ev.phase is not Phase.DECODE:
        return None
    starts = [seq for it, seq in trace.decode_starts if it == ev.iteration and seq <= ev.seq]
    return len(starts) or None


_REPORTED = (
    Phase.FORWARD,
    Phase.LOSS,
    Phase.BACKWARD,
    Phase.RECOMPUTE,
    Phase.OPTIMIZER,
    Phase.PREFILL,
    Phase.DECODE,
)


def phase_peaks(
    trace: Trace,
    iteration: int,
    tl: Timeline | None = None,
    spans: Sequence[tuple[int, int]] | None = None,
) -> tuple[PhasePeak, ...]:
    """Each phase's most bytes live after one of its allocations, with the op and module that allocated. A
    phase that only frees (the autocast cache cleared as the loss phase starts, when the model computed its
    own loss) keeps the level after its first free, with no op: the storage freed was made elsewhere.
    Per run of one phase (`runs`): the first event at its highest level, among allocations and any."""
    tl = tl or timeline(trace)
    after, events, alloc = tl.live_after, tl.events, Kind.ALLOC
    allocs: dict[Phase, int] = {}
    anything: dict[Phase, int] = {}
    for start, end in runs(events) if spans is None else spans:
        if events[start].iteration != iteration:
            continue
        phase = events[start].phase
        high = max(after[start:end])
        i = after.index(high, start, end)
        j = anything.get(phase)
        if j is None or high > after[j]:
            anything[phase] = i
        made = [k for k in range(start, end) if events[k].kind is alloc]
        if made:
            i = max(made, key=after.__getitem__)
            j = allocs.get(phase)
            if j is None or after[i] > after[j]:
                allocs[phase] = i
    rows = []
    for phase in _REPORTED:
        idx = allocs.get(phase)
        if idx is not None:
            ev = tl.events[idx]
            rows.append(PhasePeak(phase, after[idx], ev.op, ev.module))
            continue
        idx = anything.get(phase)
        if idx is not None:
            rows.append(PhasePeak(phase, after[idx], "", ""))
    return tuple(rows)


def storages_in(trace: Trace, iteration: int) -> set[int]:
    """Every storage live at some point of the iteration: those live as it starts, and those it allocates."""
    live = set(trace.baseline)
    seen: set[int] = set()
    for ev in trace.events:
        if ev.iteration == iteration and not seen:
            seen = set(live)
        if ev.iteration == iteration:
            seen.add(ev.storage)
        elif ev.kind is Kind.ALLOC:
            live.add(ev.storage)
        else:
            live.discard(ev.storage)
    return seen or live


def category_totals(trace: Trace, iteration: int, step: set[int] | None = None) -> dict[Category, int]:
    """Bytes of every storage of each category that was live at some point of the iteration (`step`: its
    `storages_in`, where the caller has them)."""
    step = storages_in(trace, iteration) if step is None else step
    return by_category(trace.storages[s] for s in step)


_SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}


def owner(info: StorageInfo) -> str:
    """The module a storage belongs to; what the optimizer step makes outside any module is its own owner,
    and so is what the loss makes: the loss phase's, and a loss function's inside the model (`(loss):NAME`,
    a model computing its own loss after its head)."""
    return owner_of(info.module, info.phase, info.category)


def owner_of(module: str, phase: Phase, category: Category) -> str:
    if not module and phase is Phase.OPTIMIZER and category is Category.TEMPORARY:
        return OPTIMIZER_STEP
    if module.startswith(LOSS) or (not module and phase is Phase.LOSS):
        return LOSS
    return module


def loss_type(infos: Iterable[StorageInfo]) -> str:
    """The loss row's type: the loss function, and the op, dtype and shape of its largest tensor
    (`cross_entropy: _log_softmax fp32 2048x50257`)."""
    loss = Phase.LOSS  # `owner(s) == LOSS`, inlined (a step's every storage is asked)
    mine = [s for s in infos if s.module.startswith(LOSS) or (not s.module and s.phase is loss)]
    if not mine:
        return ""
    big = max(mine, key=lambda s: (s.nbytes, -s.storage))
    names = sorted({s.module.removeprefix(LOSS + ":") for s in mine if s.module.startswith(LOSS + ":")})
    shape = "x".join(map(str, big.shape)) or "scalar"
    tensor = f"{big.op} {_SHORT_DTYPES.get(big.dtype, big.dtype)} {shape}"
    return f"{', '.join(names)}: {tensor}" if names else tensor


def module_type(name: str, types: dict[str, str], infos: Iterable[StorageInfo]) -> str:
    """A row's type: the module's class, the loss's function and largest tensor, nothing for the optimizer."""
    if name == LOSS:
        return loss_type(infos)
    return types.get(name, "") if name != OPTIMIZER_STEP else ""


def layers_at_peak(
    trace: Trace, peak: Peak, types: dict[str, str], n: int = 5, live: set[int] | None = None
) -> tuple[LayerShare, ...]:
    """Group what is live at the peak by owning module (parameters count for the module that holds them);
    `live`: the storages live at it, where the caller has them (`peak_and_live`)."""
    live = live_at_peak(trace, peak) if live is None else live
    groups: dict[str, list[StorageInfo]] = {}
    for sid in live:
        info = trace.storages[sid]
        if info.category is Category.INPUT:
            continue
        groups.setdefault(owner(info), []).append(info)
    rows = [
        LayerShare(
            m,
            module_type(m, types, infos),
            sum(s.nbytes for s in infos),
            by_category(infos),
        )
        for m, infos in groups.items()
    ]
    rows.sort(key=lambda r: (-r.bytes, r.module))
    return tuple(rows[:n])


def category_peak(trace: Trace, iteration: int, category: Category) -> int:
    """The most bytes of one category live at once during the iteration (saved activations: what the graph
    holds when backward starts, one micro-batch's worth)."""
    live = sum(trace.storages[s].nbytes for s in trace.baseline if trace.storages[s].category is category)
    best = live if any(e.iteration == iteration for e in trace.events) else 0
    for ev in trace.events:
        if trace.storages[ev.storage].category is not category:
            continue
        live += ev.nbytes if ev.kind is Kind.ALLOC else -ev.nbytes
        if ev.iteration == iteration:
            best = max(best, live)
    return best
