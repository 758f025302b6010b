"""A Result from a trace: the CUDA allocator placed over it, the peaks, the layers, the timeline and the
verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine.config import Config

from collections.abc import Sequence
from dataclasses import dataclass, replace

from torch import nn

from ..analysis import peaks as analysis
from ..analysis.layers import ModuleFacts, module_rows
from ..analysis.timeline import step_timeline
from ..core.heap import collector_paused
from ..core.records import (
    Category,
    GpuSpec,
    InputSpec,
    ModelInfo,
    Result,
    Trace,
)
from ..core.specs import (
    Headroom,
)
from ..devices.cuda.conv import estimate_json
from ..devices.gpu import allocator_config, cuda_figures
from ..devices.gpu import verdict as verdict_for
from .placed import Placed, place


@dataclass(frozen=True)
class Run:
    """A Result with what the outputs need beside it and the JSON leaves out: the trace as recorded and, on
    cuda, its one placement through the caching allocator (the exports read both, replaying nothing)."""

    result: Result
    trace: Trace  # sizes as requested
    placed: Placed | None = None  # on cuda

    @property
    def device_trace(self) -> Trace:
        """Each storage's bytes as the device counts them: the placed trace on cuda."""
        return self.placed.trace if self.placed is not None else self.trace


def analyse(
    trace: Trace,
    model: nn.Module,
    built_path: str,
    inputs: Sequence[InputSpec],
    config: Config,
    gpu: GpuSpec | None = None,
    headroom: Headroom | None = None,
) -> Result:
    return compose(trace, model, built_path, inputs, config, gpu, headroom).result


def compose(
    trace: Trace,
    model: nn.Module,
    built_path: str,
    inputs: Sequence[InputSpec],
    config: Config,
    gpu: GpuSpec | None = None,
    headroom: Headroom | None = None,
) -> Run:
    """The Result of a trace, with the trace and its placement (on cuda: every storage counts for its
    caching-allocator block). The cyclic garbage collector waits while it runs: the analysis makes ~100k
    records and frees nothing the trace recorded, and each full collection would walk every object of the
    process (a 70B-parameter step's trace and model among them) for nothing."""
    with collector_paused():
        return _compose(trace, model, built_path, inputs, config, gpu, headroom)


def _compose(
    trace: Trace,
    model: nn.Module,
    built_path: str,
    inputs: Sequence[InputSpec],
    config: Config,
    gpu: GpuSpec | None,
    headroom: Headroom | None,
) -> Run:
    last = config.iterations - 1
    requested, placed, stats = trace, None, None
    if config.device == "cuda":
        placed = place(trace, config.allocator or allocator_config(config.alloc_conf))
        trace, stats = placed.trace, placed.stats
    tl = analysis.timeline(trace)  # each pass below reads the one timeline, peak and live set
    spans = analysis.runs(trace.events)
    at = analysis.peak_indexes(tl, spans)
    peak, live = analysis.peak_and_live(trace, last, tl, at)
    first = tl.live_after[at[0]] if 0 in at else tl.baseline
    step = analysis.storages_in(trace, last)
    types = {name: type(m).__name__ for name, m in model.named_modules()}
    cuda, reserved = None, tuple[int, ...]()
    if stats is not None:  # the bytes reserved after each event, from the placement's replay
        reserved = tuple(stats.reserved_after[len(trace.baseline) :])
        asked = max(analysis.peak_levels(requested, config.iterations, spans))
        cuda = cuda_figures(peak.bytes, asked, stats, config.arch)
        cuda = replace(
            cuda,
            cudnn_workspace_estimate=estimate_json(trace.workspace_estimate),
            managed_bytes=requested.managed_bytes,
            ranges=trace.stated_ranges,
            host_bytes=requested.host_peak_bytes,
        )
    result = Result(
        model=_model_info(model, built_path),
        device=config.device,
        mode=config.mode,
        optimizer=config.optimizer.text() if config.mode == "train" else "none",
        recipe=config.recipe.text(),
        accumulate=config.recipe.accumulate,
        flops=trace.flops,
        modules=module_rows(trace, peak, _facts(model), last, live, step),
        activation_peak=analysis.category_peak(trace, last, Category.ACTIVATION),
        inputs=tuple(inputs),
        peak=peak,
        phases=analysis.phase_peaks(trace, last, tl, spans),
        totals=analysis.category_totals(trace, last, step),
        first_iteration_peak=first,
        top_layers=analysis.layers_at_peak(trace, peak, types, live=live),
        verdict=verdict_for(gpu, headroom, peak.bytes, cuda),
        cuda=cuda,
        notes=((f"model built on meta via the {built_path} path",) if built_path != "meta" else ())
        + trace.notes,
        step=config.step_text(),
        loss=config.loss_text(),
        free_output=config.free_output,
        parallel=config.parallel.text() if config.parallel is not None else "",
        timeline=step_timeline(trace, last, peak.seq, reserved, live_after=tl.live_after, spans=spans),
        assumptions=trace.assumptions,
    )
    return Run(result, requested, placed)


def _facts(model: nn.Module) -> list[ModuleFacts]:
    """Each module's type and own parameter count; a tied parameter counts for its first owner only."""
    seen: set[int] = set()
    facts = []
    for name, m in model.named_modules():
        own = [p for p in m.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        facts.append(ModuleFacts(name, type(m).__name__, sum(p.numel() for p in own)))
    return facts


def _model_info(model: nn.Module, built_path: str) -> ModelInfo:
    params = list(model.parameters())
    return ModelInfo(
        name=type(model).__name__,
        parameters=sum(p.numel() for p in params),
        trainable_parameters=sum(p.numel() for p in params if p.requires_grad),
        parameter_bytes=sum(p.numel() * p.element_size() for p in params),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        build_path=built_path,
    )
