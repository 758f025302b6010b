"""A deep stack of identical layers from three short ones: the figures of `n` layers extrapolated from
simulations of `k`, `k+1` and `k+2` layers (pure: no torch import).

Every byte that tensors hold in a step whose repeated layers are identical grows by the same amount per
added layer, once the stack is deep enough for the peak's place to stop moving. The three short simulations
check that: the peak must fall in the same phase at the same op in all three, and each figure (the peak,
each category, the totals, the allocated and requested peaks on cuda) must grow by the same step from `k` to
`k+1` as from `k+1` to `k+2`; otherwise `extrapolate` says why and the caller simulates in full.

The caching allocator's reserved memory does not grow so: which cached segment a request reuses depends on
the whole history, and the unused cached bytes grow faster than the layers (a Llama-70B step: 4.4 GB at 3
layers, 44 GB at 80). Reserved memory is therefore an estimate, the deepest short stack's ratio of reserved
to allocated applied to the extrapolated allocated peak, and the note says so. What the short runs cannot
give is dropped, not guessed: the per-module rows, the layers at the peak and the timeline describe the
short stack, so the extrapolated result leaves them empty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ..core.records import Category, CudaFigures, ModelInfo, Peak, PhasePeak, Result


class NotAffine(Exception):
    """The short simulations do not grow by one step per layer: the reason, for a note."""


@dataclass(frozen=True)
class Stack:
    """The repeated layers: a ModuleList's path, its length in the full model, the short lengths run."""

    path: str
    layers: int
    short: tuple[int, int, int]


def affine(values: Sequence[int], counts: Sequence[int], n: int, what: str) -> int:
    """The value at `n` layers of a figure that grows by one step per layer (checked on three points)."""
    (a, b, c), (ka, kb, kc) = values, counts
    if kb - ka != 1 or kc - kb != 1:
        raise ValueError("the short stacks must be consecutive")
    if b - a != c - b:
        raise NotAffine(f"{what} grows by {b - a:,} then {c - b:,} bytes per layer")
    return a + (n - ka) * (b - a)


def extrapolate(results: Sequence[Result], stack: Stack) -> Result:
    """The result of the full stack, from the results of the three short ones (in `stack.short` order)."""
    first, last = results[0], results[-1]
    for r in results[1:]:
        if (r.peak.phase, r.peak.op) != (first.peak.phase, first.peak.op):
            was, now = first.peak, r.peak
            raise NotAffine(f"the peak moves from {was.phase.value} {was.op} to {now.phase.value} {now.op}")

    def fig(get: Callable[[Result], int], what: str) -> int:
        return affine([get(r) for r in results], stack.short, stack.layers, what)

    peak = _peak(results, fig)
    phases = _phases(results, fig)
    top = max(phases, key=lambda p: p.bytes, default=None)
    if top is not None and (top.phase is not peak.phase or top.bytes != peak.bytes):
        raise NotAffine(
            f"the {top.phase.value} phase's peak ({top.bytes:,} bytes) overtakes the {peak.phase.value} "
            f"phase's at {stack.layers} layers"
        )
    note = (
        f"extrapolated to {stack.layers} layers of {stack.path} from simulations of "
        f"{', '.join(map(str, stack.short))} layers (every figure grows by one step per layer); "
        "per-layer rows and the timeline are left out"
        + (
            "; reserved memory is an estimate (the allocator's cache does not grow by one step per layer)"
            if last.cuda is not None
            else ""
        )
    )
    return replace(
        last,
        model=_model(results, fig),
        peak=peak,
        phases=phases,
        totals={c: fig(lambda r, c=c: r.totals.get(c, 0), f"{c.value} total") for c in first.totals},  # type: ignore[misc]
        first_iteration_peak=fig(lambda r: r.first_iteration_peak, "the first step's peak"),
        activation_peak=fig(lambda r: r.activation_peak, "the saved activations' peak"),
        flops=fig(lambda r: r.flops, "FLOPs"),
        cuda=_cuda(results, fig),
        modules=(),
        top_layers=(),
        timeline=None,
        verdict=None,
        notes=(*last.notes, note),
    )


Fig = Callable[[Callable[[Result], int], str], int]


def _peak(results: Sequence[Result], fig: Fig) -> Peak:
    last = results[-1].peak
    cats = {c: fig(lambda r, c=c: r.peak.by_category.get(c, 0), f"{c.value} at the peak") for c in Category}  # type: ignore[misc]
    return replace(
        last,
        bytes=fig(lambda r: r.peak.bytes, "the peak"),
        seq=-1,
        module="",
        by_category={c: v for c, v in cats.items() if c in last.by_category},
    )


def _phases(results: Sequence[Result], fig: Fig) -> tuple[PhasePeak, ...]:
    """Each phase's peak, which must grow by one step per layer too: a phase whose peak grows faster than
    the step's overtakes it in a deeper stack (a 70B step at 8192 tokens peaks in backward with 2 to 4
    layers, in the optimizer step with 80), so `extrapolate` compares them at the full depth."""
    rows = []
    for i, row in enumerate(results[-1].phases):
        if any(
            len(r.phases) != len(results[-1].phases) or r.phases[i].phase is not row.phase for r in results
        ):
            raise NotAffine("the short stacks differ in their phases")
        grown = fig(lambda r: r.phases[i].bytes, f"the {row.phase.value} phase's peak")  # noqa: B023
        rows.append(replace(row, bytes=grown, module=""))
    return tuple(rows)


def _model(results: Sequence[Result], fig: Fig) -> ModelInfo:
    m = results[-1].model
    return replace(
        m,
        parameters=fig(lambda r: r.model.parameters, "parameters"),
        trainable_parameters=fig(lambda r: r.model.trainable_parameters, "trainable parameters"),
        parameter_bytes=fig(lambda r: r.model.parameter_bytes, "parameter bytes"),
        buffer_bytes=fig(lambda r: r.model.buffer_bytes, "buffer bytes"),
    )


def _scaled(value: int, allocated: int, full_allocated: int) -> int:
    """An estimate at the full depth: the deepest short stack's ratio to its allocated peak, kept (the
    cached-but-unused share shrinks as the stack deepens: this errs high, the safe side for a verdict)."""
    return value * full_allocated // allocated if allocated else value


def _cuda(results: Sequence[Result], fig: Fig) -> CudaFigures | None:
    cuda = results[-1].cuda
    if cuda is None:
        return None
    allocated = fig(lambda r: r.cuda.allocated_peak_bytes, "allocated")  # type: ignore[union-attr]
    reserved = _scaled(cuda.reserved_peak_bytes, cuda.allocated_peak_bytes, allocated)
    return replace(
        cuda,
        allocated_peak_bytes=allocated,
        requested_peak_bytes=fig(lambda r: r.cuda.requested_peak_bytes, "requested"),  # type: ignore[union-attr]
        reserved_peak_bytes=reserved,
        fragmentation_bytes=_scaled(cuda.fragmentation_bytes, cuda.allocated_peak_bytes, allocated),
        segments=(),
    )
