"""Fit and sweep: the largest batch that fits, accumulation plans, and tables over batch x resolution.

Every figure is a simulation; the search only decides which values to simulate.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from ..core.errors import MemtraceError
from ..core.records import FITS, Category, GpuSpec, Result, Verdict, stated_uncertainty
from ..core.specs import Headroom, OptimizerSpec, bind_inputs, budget, input_symbols
from ..core.studies import FitResult, Plan, Serving, Suggestion, SweepRow, WorldFit
from ..devices.gpu import verdict
from ..simulate import Request, run, with_gpu_arch
from .serving import Context, bind_tokens, context_of, tokens_symbol

MAX_VALUE = 1 << 16


def bind(request: Request, values: dict[str, int]) -> Request:
    """Give the symbols values: in the input shapes, in builder arguments that name a symbol (`h=H`), in
    the world size of `--ddp W` / `--fsdp W`, and in `--max-new-tokens N`."""
    inputs = bind_inputs(request.inputs, values)
    kwargs = tuple(
        (k, values[v] if isinstance(v, str) and v in values else v) for k, v in request.builder_kwargs
    )
    config = request.config
    parallel = config.parallel
    if parallel is not None and parallel.symbol in values:
        config = replace(config, parallel=replace(parallel, world=values[parallel.world]))  # type: ignore[index]
    return bind_tokens(replace(request, inputs=inputs, builder_kwargs=kwargs, config=config), values)


def world_symbol(request: Request) -> str | None:
    """The symbol of `--ddp W` / `--fsdp W`, if the world size is one."""
    parallel = request.config.parallel
    return parallel.symbol if parallel is not None else None


def budget_of(gpu: GpuSpec, headroom: Headroom | None, device: str) -> int:
    """The GPU's budget for the figure `Result.fit_bytes` gives: reserved memory on cuda."""
    return budget(gpu, headroom, reserved=device == "cuda")


def uncertain_bytes(result: Result) -> int:
    """What the figure held against the budget may still grow by: the verdict's stated bounds, summed."""
    return sum(b for _, b in stated_uncertainty(result.cuda))


def sure_bytes(result: Result) -> int:
    """The figure held against the budget with every stated uncertainty at its bound: what surely fits."""
    return result.fit_bytes + uncertain_bytes(result)


@dataclass
class Probe:
    """Simulations made so far for one symbol, by value. `sure`: the figure held against the budget counts
    every stated uncertainty at its bound (a value that fits surely fits); else the simulated figure alone (a
    value that fits only so is borderline). Views of both kinds share the simulations."""

    request: Request
    symbol: str
    results: dict[int, Result] = field(default_factory=dict)
    sure: bool = True

    @property
    def peaks(self) -> dict[int, int]:
        """The figure held against the budget, by value simulated."""
        return {v: sure_bytes(r) if self.sure else r.fit_bytes for v, r in self.results.items()}

    def peak(self, value: int) -> int:
        if value not in self.results:
            self.results[value] = run(bind(self.request, {self.symbol: value}))
        res = self.results[value]
        return sure_bytes(res) if self.sure else res.fit_bytes

    def allocated(self, value: int) -> int:
        """The allocated peak, which grows about affinely, where reserved memory grows in segment steps."""
        self.peak(value)
        return self.results[value].peak_bytes


def symbols_of(request: Request) -> list[str]:
    """The symbols of --input's shapes, then `--max-new-tokens N`'s."""
    symbols = input_symbols(request.inputs)
    tokens = tokens_symbol(request)
    return [*symbols, tokens] if tokens is not None and tokens not in symbols else symbols


def the_symbol(request: Request) -> str:
    symbols = symbols_of(request)
    if not symbols:
        raise MemtraceError("no symbol in --input: write the dimension to fit as a letter, e.g. Bx3x224x224")
    if len(symbols) > 1:
        where = "--input and --max-new-tokens have" if tokens_symbol(request) else "--input has"
        raise MemtraceError(f"fit takes one symbol, {where} {', '.join(symbols)}: give the others numbers")
    return symbols[0]


def boundary(probe: Probe, budget: int, limit: int = MAX_VALUE) -> tuple[int, bool]:
    """The largest value in [1, limit] whose figure (`probe.peak`) fits (0 if none; True if it hit the limit).

    Peaks grow about affinely with a batch size: a line through probed peaks predicts the boundary, the
    prediction is probed, and a value that fits next to one that does not ends the search. Until a value
    that does not fit is known, the line follows the allocated peak (plus what the figure holds beyond it);
    then the figure's own line through the bracket's ends (regula falsi), the end kept twice in a row
    weighted down by half each time (the Illinois rule), so that the bracket closes from both sides. On
    cuda the figure is reserved memory, which grows in segment steps and need not be monotone: when the line
    only creeps along the bracket's edge, bisection takes over.
    """
    if probe.peak(1) > budget:
        return 0, False
    probe.peak(2 if limit >= 2 else 1)
    creep = 0  # probes in a row that only moved the bracket by one
    kept = [0, 0]  # probes in a row that kept the bracket's low end, its high end
    while True:
        hi = min((v for v, p in probe.peaks.items() if p > budget), default=limit + 1)
        lo = max(v for v, p in probe.peaks.items() if p <= budget and v < hi)
        if hi - lo <= 1 or lo >= limit:
            return min(lo, limit), hi > limit
        if hi > limit:
            guess = _line_guess(probe, lo, budget, limit)
        else:
            guess = _falsi_guess(probe, lo, hi, budget, kept)
        guess = min(max(guess, lo + 1), hi - 1)
        if creep >= 2:
            guess = (lo + hi) // 2
        fits = probe.peak(guess) <= budget
        kept = [0, kept[1] + 1] if fits else [kept[0] + 1, 0]
        creep = (
            creep + 1 if (fits and guess == lo + 1 and hi - lo > 2) or (not fits and guess == hi - 1) else 0
        )


def _falsi_guess(probe: Probe, lo: int, hi: int, budget: int, kept: list[int]) -> int:
    """Where the figure's line through the bracket's ends crosses the budget, an end kept k > 1 times in a
    row weighted by 2^-(k-1)."""
    below = (budget - probe.peak(lo)) / 2 ** max(0, kept[0] - 1)
    above = (probe.peak(hi) - budget) / 2 ** max(0, kept[1] - 1)
    if below + above <= 0:
        return (lo + hi) // 2
    return lo + int((hi - lo) * below / (below + above))


def _line_guess(probe: Probe, lo: int, budget: int, limit: int) -> int:
    """Where the allocated peak's line through the two largest values that fit crosses the budget, less
    what the figure holds beyond the allocated peak at the line's start."""
    fitting = sorted(v for v, p in probe.peaks.items() if p <= budget)
    a, b = (fitting[-2], fitting[-1]) if len(fitting) > 1 else (lo, lo)
    slope = (probe.allocated(b) - probe.allocated(a)) / (b - a) if b != a else 0.0
    if slope <= 0:
        return min(limit, lo * 4)
    overhead = probe.peak(a) - probe.allocated(a)  # reserved beyond allocated (0 off cuda)
    return a + int((budget - overhead - probe.allocated(a)) // slope)


WORLD_SIZES = tuple(1 << k for k in range(11))  # the world sizes fit tries: powers of two up to 1024


def fit_world(request: Request, gpu: GpuSpec, headroom: Headroom | None = None) -> WorldFit:
    """The powers of two from 1 up to 1024, in turn, until one fits, with the input symbol, if any, at 1;
    then fit the input symbol at that world size. Upward, not bisected: a rank's peak need not fall as the
    world grows (FSDP2 pads every shard to the world size, which on a small model outweighs the sharding)."""
    symbol = world_symbol(request)
    assert symbol is not None
    batch_symbols = input_symbols(request.inputs)
    if len(batch_symbols) > 1:
        raise MemtraceError(
            f"fit takes one --input symbol besides {symbol}, --input has {', '.join(batch_symbols)}"
        )
    ones = {s: 1 for s in batch_symbols}
    budget = budget_of(gpu, headroom, request.config.device)
    basis = "reserved" if request.config.device == "cuda" else "allocated"
    probes: list[tuple[int, int]] = []
    for world in WORLD_SIZES:
        res = run(bind(request, {symbol: world, **ones}))
        probes.append((world, res.fit_bytes))
        if sure_bytes(res) <= budget:
            break
    else:
        return WorldFit(symbol, 0, probes[-1][1], budget, tuple(probes), basis)
    at_world = replace(request, config=bind(request, {symbol: world, **ones}).config)
    batch = fit(at_world, gpu, headroom, suggest=False) if batch_symbols else None
    return WorldFit(symbol, world, probes[-1][1], budget, tuple(probes), basis, batch)


def fit(request: Request, gpu: GpuSpec, headroom: Headroom | None = None, suggest: bool = True) -> FitResult:
    """The largest value that surely fits, then (from the same simulations on) the largest that fits by the
    simulation alone: borderline when it is larger."""
    symbol = the_symbol(request)
    budget = budget_of(gpu, headroom, request.config.device)
    context = context_of(request, symbol)
    limit = context.limit or MAX_VALUE  # a prompt or generation length: the model's positions bound it
    probe = Probe(request, symbol)
    best, capped = boundary(probe, budget, limit)
    simulated = replace(probe, sure=False)  # the same simulations, the uncertainty left out
    edge, edge_capped = boundary(simulated, budget, limit) if not capped else (best, capped)
    suggestions = tuple(_suggest(request, gpu, headroom)) if best == 0 and suggest else ()
    at = max(best, 1)
    nxt = simulated.peak(best + 1) if not capped else simulated.peak(at)
    border = edge if edge > best else 0
    return FitResult(
        symbol,
        best,
        simulated.peak(at),
        nxt,
        budget,
        len(probe.results),
        tuple(sorted(simulated.peaks.items())),
        suggestions,
        capped,
        "reserved" if request.config.device == "cuda" else "allocated",
        probe.results[at].peak_bytes,
        uncertain_bytes(probe.results[at]),
        tuple(r for r, _ in stated_uncertainty(probe.results[at].cuda)),
        border,
        simulated.peak(border) if border else 0,
        simulated.peak(border + 1) if border and not edge_capped else 0,
        _serving(request, context, symbol, best, capped),
    )


def _serving(request: Request, context: Context, symbol: str, value: int, capped: bool) -> Serving | None:
    """What fit says of a generation: the positions' bound (and whether it stopped the search, `capped` at
    the limit), and the total context at the answer."""
    if request.config.mode != "generate":
        return None
    return Serving(
        context.positions or 0,
        context.limit or 0,
        capped and context.limit is not None,
        (context.total(symbol, value) or 0) if value else 0,
    )


def _suggest(request: Request, gpu: GpuSpec, headroom: Headroom | None) -> Iterator[Suggestion]:
    """Each single change that makes the smallest batch fit, with the batch it then allows."""
    from .whatif import top_level_blocks

    def recipe(**kw: Any) -> Callable[[Request], Request]:
        return lambda r: replace(r, config=replace(r.config, recipe=replace(r.config.recipe, **kw)))

    if request.config.mode == "generate":  # no backward, no optimizer: only what the forward keeps helps
        serving: list[tuple[str, str, Callable[[Request], Request]]] = [
            ("bf16 weights", "--dtype bf16", recipe(dtype="bf16")),
            ("bf16 autocast", "--amp bf16", recipe(amp="bf16")),
        ]
        yield from _fitting(request, gpu, headroom, serving)
        return
    changes: list[tuple[str, str, Callable[[Request], Request]]] = [
        ("bf16 autocast", "--amp bf16", recipe(amp="bf16")),
        ("SGD with momentum", "--optimizer sgd:momentum=0.9", _sgd),
        ("half resolution", "halve the last two input dimensions", _half_resolution),
    ]
    try:
        from ..simulate import build

        blocks = top_level_blocks(build(request.builder, dict(request.builder_kwargs)).model)
        if blocks:
            changes.insert(
                1,
                (
                    "checkpoint blocks",
                    " ".join(f"--checkpoint {b}" for b in blocks),
                    recipe(checkpoint=tuple(blocks)),
                ),
            )
    except MemtraceError:
        pass
    yield from _fitting(request, gpu, headroom, changes)


def _fitting(
    request: Request,
    gpu: GpuSpec,
    headroom: Headroom | None,
    changes: list[tuple[str, str, Callable[[Request], Request]]],
) -> Iterator[Suggestion]:
    for change, flags, make in changes:
        try:
            res = fit(make(request), gpu, headroom, suggest=False)
        except MemtraceError:
            continue
        if res.max_value > 0:
            yield Suggestion(change, flags, res.max_value, res.peak_bytes)


def _sgd(request: Request) -> Request:
    return replace(
        request, config=replace(request.config, optimizer=OptimizerSpec("sgd", (("momentum", 0.9),)))
    )


_SIZE_ARGS = ("h", "w", "height", "width", "size", "image_size", "img_size", "resolution")


def _half_resolution(request: Request) -> Request:
    inputs = tuple(
        replace(s, shape=(*s.shape[:-2], *(_half(d) for d in s.shape[-2:]))) if len(s.shape) >= 3 else s
        for s in request.inputs
    )
    kwargs = tuple(
        (k, _half(v) if k in _SIZE_ARGS and isinstance(v, int) else v) for k, v in request.builder_kwargs
    )
    return replace(request, inputs=inputs, builder_kwargs=kwargs)


def _half(d: int | str) -> int | str:
    return max(1, d // 2) if isinstance(d, int) else d


def plan_accumulation(
    request: Request, gpu: GpuSpec, headroom: Headroom | None, target: int, fitted: FitResult
) -> Plan:
    """Fewest accumulation steps reaching an effective batch >= target, each verified by simulation to fit
    surely (every stated uncertainty at its bound)."""
    if target < 1:
        raise MemtraceError("--target-batch must be at least 1")
    if fitted.max_value == 0:
        raise MemtraceError("even a batch of 1 does not surely fit: no accumulation plan can help")
    budget = budget_of(gpu, headroom, request.config.device)
    steps = math.ceil(target / fitted.max_value)
    while steps <= target:
        micro = math.ceil(target / steps)
        req = replace(
            request, config=replace(request.config, recipe=replace(request.config.recipe, accumulate=steps))
        )
        res = run(bind(req, {fitted.symbol: micro}))
        if sure_bytes(res) <= budget:
            return Plan(micro, steps, micro * steps, res.fit_bytes)
        steps += 1
    raise MemtraceError(f"no accumulation plan reaches a batch of {target}")


def parse_sets(sets: list[tuple[str, list[tuple[int, ...]]]]) -> list[list[dict[str, int]]]:
    """`HxW=144x256,540x960` -> one axis of bindings [{H: 144, W: 256}, {H: 540, W: 960}]."""
    axes = []
    seen: set[str] = set()
    for names, values in sets:
        keys = names.split("x")
        for k in keys:
            if k in seen:
                raise MemtraceError(f"--set gives {k} twice")
            seen.add(k)
        axes.append([dict(zip(keys, v, strict=True)) for v in values])
    return axes


def sweep(
    request: Request,
    axes: list[list[dict[str, int]]],
    gpus: list[GpuSpec],
    headroom: Headroom | None,
    progress: Callable[[], None] = lambda: None,
) -> list[SweepRow]:
    given = {k for axis in axes for k in axis[0]}
    world = world_symbol(request)
    symbols = set(symbols_of(request)) | ({world} if world is not None else set())
    used = symbols | {v for _, v in request.builder_kwargs if isinstance(v, str)}
    missing = symbols - given
    if missing:
        raise MemtraceError(f"symbol {sorted(missing)[0]} has no --set")
    if given - used:
        raise MemtraceError(f"--set gives {sorted(given - used)[0]}, which no --input or --arg uses")
    rows = []
    for combo in itertools.product(*axes):
        values = {k: v for part in combo for k, v in part.items()}
        rows.append(_sweep_row(bind(request, values), values, gpus, headroom))
        progress()
    return rows


def _per_gpu(req: Request, gpus: list[GpuSpec]) -> dict[str, Result]:
    """One simulation per distinct GPU architecture (SDPA's kernel and workspaces depend on it), by GPU."""
    by_arch: dict[str | None, Result] = {}
    results: dict[str, Result] = {}
    choices: list[GpuSpec | None] = [*gpus] or [None]
    for gpu in choices:
        target = with_gpu_arch(replace(req, gpu=gpu))
        arch = target.config.arch
        if arch not in by_arch:
            by_arch[arch] = run(replace(target, gpu=None))
        results[gpu.name if gpu is not None else ""] = by_arch[arch]
    return results


def _sweep_row(
    req: Request, values: dict[str, int], gpus: list[GpuSpec], headroom: Headroom | None
) -> SweepRow:
    try:
        per_gpu = _per_gpu(req, gpus)
    except MemtraceError as exc:
        return SweepRow(values, 0, 0, 0, 0, {}, exc.one_line())
    res = next(iter(per_gpu.values()))
    cat = res.totals
    states = sum(
        cat.get(c, 0)
        for c in (Category.PARAMETER, Category.BUFFER, Category.GRADIENT, Category.OPTIMIZER_STATE)
    )
    verdicts = {g.name: _verdict(per_gpu[g.name], g, headroom) for g in gpus}
    fits = {name: v.status == FITS for name, v in verdicts.items()}
    status = {name: v.status for name, v in verdicts.items()}
    reserved = res.cuda.reserved_peak_bytes if res.cuda is not None else 0
    return SweepRow(
        values,
        cat[Category.INPUT],
        states,
        res.activation_peak,
        res.peak_bytes,
        fits,
        "",
        reserved,
        status,
        res.peak.by_category.get(Category.KV_CACHE, 0),
        res.peak.phase.value,
        res.peak.token_index,
    )


def _verdict(result: Result, gpu: GpuSpec, headroom: Headroom | None) -> Verdict:
    """The verdict the row's trace would give on `gpu` (the same judgement, its uncertainties weighed)."""
    found = verdict(gpu, headroom, result.peak_bytes, result.cuda)
    assert found is not None  # a GPU is given
    return found
