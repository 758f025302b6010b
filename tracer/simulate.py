"""The public engine API: build on meta, run the step under the recorder, analyse, return a Result."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from memtrace.tracer import analysis
from memtrace.tracer.devices import DeviceModel
from memtrace.tracer.errors import MemtraceError, first_line
from memtrace.tracer.layers import ModuleFacts, module_rows
from memtrace.tracer.loader import Built, build_on_meta, load_object, make_inputs
from memtrace.tracer.program import StepPlan, make_optimizer, run_program
from memtrace.tracer.recipes import Recipe, apply_to_model, cast_inputs, meta_autocast
from memtrace.tracer.recorder import Recorder, recording, register_baseline
from memtrace.tracer.records import Category, GpuSpec, InputSpec, ModelInfo, Phase, Result, Trace, Verdict
from memtrace.tracer.specs import Headroom, OptimizerSpec, budget, parse_input, parse_optimizer

MODES = ("train", "infer")


@dataclass(frozen=True)
class Config:
    """How to simulate: train or infer, the optimizer, the target device, how many iterations."""

    mode: str = "train"
    optimizer: OptimizerSpec = field(default_factory=lambda: OptimizerSpec("adam"))
    device: str = "cuda"
    iterations: int = 2
    recipe: Recipe = field(default_factory=Recipe)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise MemtraceError(f"unknown mode {self.mode!r} (train or infer)")
        if self.device not in ("cpu", "cuda"):
            raise MemtraceError(f"unknown device {self.device!r} (cpu or cuda)")
        if self.iterations < 1:
            raise MemtraceError("iterations must be at least 1")


def trace_model(model: nn.Module, inputs: Sequence[torch.Tensor], config: Config) -> Trace:
    """Run the program on the model's (meta) tensors and return every event.

    The recipe is applied to the model here (cast, checkpoint wrapping): pass a freshly built model.
    """
    device = DeviceModel(config.device)
    rec = Recorder(device)
    try:
        apply_to_model(model, config.recipe)
        inputs = cast_inputs(list(inputs), config.recipe.dtype)
        optimizer = None
        if config.mode == "train":
            optimizer = make_optimizer(config.optimizer, list(model.parameters()), config.device)
        register_baseline(rec, model, inputs, _parameter_owners(model))
        with device.patched(), recording(rec, model):
            run_program(model, inputs, optimizer, plan_for(config), rec, config.iterations)
    except MemtraceError:
        raise
    except Exception as exc:
        raise MemtraceError(_failure(rec, model, exc)) from exc
    return rec.trace(config.iterations)


def plan_for(config: Config) -> StepPlan:
    """The step on meta: the recipe's accumulation and the emulated autocast of the target device."""
    autocast = meta_autocast(config.device, config.recipe.amp)
    scaler = None
    if config.recipe.amp == "fp16" and config.mode == "train":
        from memtrace.tracer.autocast import MetaGradScaler

        scaler = MetaGradScaler(config.device)  # fp16 training scales the loss
    return StepPlan(config.mode, config.recipe.accumulate, autocast, scaler)


def _failure(rec: Recorder, model: nn.Module, exc: Exception) -> str:
    where = rec.failed_in or rec.module_stack[-1] or type(model).__name__
    text = str(exc)
    if rec.phase is Phase.SETUP:
        return f"setting up the step failed: {first_line(exc)}"
    if "Meta kernel" in text or "'Meta' backend" in text:
        found = re.match(r"(\S+::[\w.]+)", text)
        op = found.group(1) if found else "an operator"
        return (
            f"the {rec.phase.value} pass failed in module {where!r}: {op} has no meta kernel; register one "
            "with torch.library.register_fake to simulate this model"
        )
    hint = ""
    if "meta tensors" in text or "data-dependent" in text.lower():
        hint = " (data-dependent code such as .item(), nonzero or an if on tensor values cannot run on meta)"
    return f"the {rec.phase.value} pass failed in module {where!r}: {first_line(exc)}{hint}"


def _parameter_owners(model: nn.Module) -> dict[int, str]:
    owners: dict[int, str] = {}
    for mname, module in model.named_modules():
        for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            owners.setdefault(id(t), mname)
    return owners


def analyse(
    trace: Trace,
    model: nn.Module,
    built_path: str,
    inputs: Sequence[InputSpec],
    config: Config,
    gpu: GpuSpec | None = None,
    headroom: Headroom | None = None,
) -> Result:
    rounding = DeviceModel(config.device).round
    last = config.iterations - 1
    peak = analysis.step_peak(trace, last, rounding)
    first = analysis.step_peak(trace, 0, rounding).bytes
    types = {name: type(m).__name__ for name, m in model.named_modules()}
    verdict = None
    if gpu is not None:
        room = budget(gpu, headroom)
        verdict = Verdict(gpu, peak.bytes <= room, room, room - peak.bytes)
    return Result(
        model=_model_info(model, built_path),
        device=config.device,
        mode=config.mode,
        optimizer=config.optimizer.text() if config.mode == "train" else "none",
        recipe=config.recipe.text(),
        accumulate=config.recipe.accumulate,
        flops=trace.flops,
        modules=module_rows(trace, peak, _facts(model), last, rounding),
        activation_peak=analysis.category_peak(trace, last, Category.ACTIVATION, rounding),
        inputs=tuple(inputs),
        peak=peak,
        phases=analysis.phase_peaks(trace, last, rounding),
        totals=analysis.category_totals(trace, last, rounding),
        first_iteration_peak=first,
        top_layers=analysis.layers_at_peak(trace, peak, types, rounding=rounding),
        verdict=verdict,
        notes=(f"model built on meta via the {built_path} path",) if built_path != "meta" else (),
    )


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


def build(builder: str | Callable[..., Any], builder_kwargs: dict[str, Any] | None = None) -> Built:
    fn = load_object(builder) if isinstance(builder, str) else builder
    if not callable(fn):
        raise MemtraceError(f"builder {builder!r} is not callable")
    name = builder if isinstance(builder, str) else getattr(fn, "__name__", repr(fn))
    return build_on_meta(fn, builder_kwargs or {}, name)


@dataclass(frozen=True)
class Request:
    """Everything one simulation needs; what-if rows, fit and sweep vary one field of it."""

    builder: str | Callable[..., Any]
    inputs: tuple[InputSpec, ...] = ()
    builder_kwargs: tuple[tuple[str, Any], ...] = ()
    config: Config = field(default_factory=Config)
    gpu: GpuSpec | None = None
    headroom: Headroom | None = None
    transform: Callable[[nn.Module], None] | None = None  # model surgery before the step (diagnosis)


def run(request: Request) -> Result:
    """Build on meta, run the step, analyse it."""
    built = build(request.builder, dict(request.builder_kwargs))
    if request.transform is not None:
        request.transform(built.model)
    specs = list(request.inputs) or list(built.example_inputs)
    if not specs:
        raise MemtraceError("no input given: pass --input SHAPE (or return example inputs from the builder)")
    if any(isinstance(d, str) for s in specs for d in s.shape):
        raise MemtraceError(
            "an --input has a symbolic dimension: give numbers (symbols are for fit and sweep)"
        )
    trace = trace_model(built.model, make_inputs(specs, "meta"), request.config)
    return analyse(trace, built.model, built.path, specs, request.config, request.gpu, request.headroom)


def simulate(
    builder: str | Callable[..., Any],
    inputs: Sequence[InputSpec | str] = (),
    *,
    builder_kwargs: dict[str, Any] | None = None,
    mode: str = "train",
    optimizer: str | OptimizerSpec = "adam",
    device: str = "cuda",
    gpu: GpuSpec | None = None,
    headroom: Headroom | None = None,
    iterations: int = 2,
    recipe: Recipe | None = None,
) -> Result:
    """Simulate `iterations` steps of the model on meta and report the steady-state step."""
    opt = parse_optimizer(optimizer) if isinstance(optimizer, str) else optimizer
    config = Config(mode, opt, device, iterations, recipe or Recipe())
    specs = tuple(parse_input(s) if isinstance(s, str) else s for s in inputs)
    kwargs = tuple((builder_kwargs or {}).items())
    return run(Request(builder, specs, kwargs, config, gpu, headroom))


__all__ = ["Category", "Config", "Request", "analyse", "build", "run", "simulate", "trace_model"]
