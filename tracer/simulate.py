"""The public engine API: build on meta, run the step under the recorder, analyse, return a Result."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .analysis.compose import analyse
from .core.errors import MemtraceError
from .core.presets import PRESETS, normalise_gpu_name
from .core.records import (
    Category,
    GpuSpec,
    InputSpec,
    Result,
    Trace,
)
from .core.specs import (
    Headroom,
    LossSpec,
    OptimizerSpec,
    check_input_names,
    parse_input,
    parse_loss,
    parse_optimizer,
)
from .engine.batch import Batch
from .engine.config import SDPA_BACKENDS, Config, StepFn
from .engine.loader import Built, build_on_meta, load_object, make_inputs, spec_of
from .engine.recipes import Recipe
from .engine.trace import plan_for, step_function, trace_model
from .meta.routing import staying_on
from .meta.target_view import TargetGpu, target_gpu, target_view


def build(builder: str | Callable[..., Any], builder_kwargs: dict[str, Any] | None = None) -> Built:
    fn = load_object(builder) if isinstance(builder, str) else builder
    if not callable(fn):
        raise MemtraceError(f"builder {builder!r} is not callable")
    name = builder if isinstance(builder, str) else getattr(fn, "__name__", repr(fn))
    with staying_on("meta"):  # `.to("cuda")` of a builder that was told a GPU is there
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


def with_gpu_arch(request: Request) -> Request:
    """The compute capability of the `--gpu` preset, for the kernels chosen per GPU (a size has none)."""
    if request.gpu is None or request.config.arch is not None or request.config.device != "cuda":
        return request
    preset = PRESETS.get(normalise_gpu_name(request.gpu.name))
    if preset is None:
        return request
    return replace(request, config=replace(request.config, arch=preset.compute_capability))


def run(request: Request) -> Result:
    """Build on meta, run the step, analyse it (a repeated stack from short ones with --repeat-layers)."""
    if request.config.repeat_layers:
        from .analysis.repeat import run_repeated

        request = with_gpu_arch(request)
        with target_view(view_target(request)):
            return run_repeated(request, run, build)
    return run_traced(request)[1]


def view_target(request: Request) -> TargetGpu | None:
    """The GPU the user's code is told about while it runs (target_view.py)."""
    return target_gpu(request.config.device, request.gpu, request.config.arch)


def run_traced(request: Request) -> tuple[Trace, Result]:
    """`run`, also giving the recorded trace (sizes as requested), for the exports. The user's code (the
    builder's module, the builder, the step's module and the step) sees the target GPU while it runs."""
    request = with_gpu_arch(request)
    with target_view(view_target(request)) as seen:
        built = build(request.builder, dict(request.builder_kwargs))
        if request.transform is not None:
            request.transform(built.model)
        specs = step_specs(request, built)
        trace = trace_model(built.model, step_batch(request, specs), request.config)
    trace = replace(trace, notes=(*trace.notes, *seen.lines()))
    return trace, analyse(
        trace, built.model, built.path, specs, request.config, request.gpu, request.headroom
    )


def step_specs(request: Request, built: Built) -> list[InputSpec]:
    """The inputs of the step: --input, else the builder's examples; numbers only, distinct names."""
    specs = list(request.inputs) or list(built.example_inputs)
    if not specs:
        raise MemtraceError("no input given: pass --input SHAPE (or return example inputs from the builder)")
    targets = request.config.targets
    if any(isinstance(d, str) for s in (*specs, *targets) for d in s.shape):
        raise MemtraceError(
            "an --input has a symbolic dimension: give numbers (symbols are for fit and sweep)"
        )
    check_input_names(specs)
    named = {s.name is not None for s in specs}
    if request.config.step is not None and len(named) > 1:
        raise MemtraceError("--step receives its inputs as a tuple or a dict: name all of them, or none")
    return specs


def step_batch(request: Request, specs: Sequence[InputSpec], device: str = "meta") -> Batch:
    """The step's inputs and a user loss's targets: empty on meta, random values for a real run."""
    return make_inputs(specs, device, request.config.targets)


Inputs = Sequence["InputSpec | str | torch.Tensor"] | dict[str, "InputSpec | str | torch.Tensor"]


def simulate(
    model: str | Callable[..., Any] | nn.Module,
    inputs: Inputs = (),
    *,
    builder_kwargs: dict[str, Any] | None = None,
    mode: str = "train",
    optimizer: str | OptimizerSpec = "adam",
    device: str = "cuda",
    gpu: GpuSpec | None = None,
    headroom: Headroom | None = None,
    iterations: int = 2,
    recipe: Recipe | None = None,
    loss: str | LossSpec | None = None,
    free_output: bool = False,
    step: str | StepFn | None = None,
    sdpa_backend: str = "auto",
    cudnn_version: int | None = None,
    alloc_conf: str | None = None,
    assume: tuple[tuple[str, str], ...] = (),
) -> Result:
    """Simulate `iterations` steps of the model on meta and report the steady-state step.

    `model` is a builder (`"FILE.py:FUNC"`, a callable) or a real `nn.Module`, copied to meta without its
    weights. `inputs` are specs (`"4x512:int64"`), tensors (their shape and dtype), or a dict of them for
    keyword inputs. `step` is the user's own step function, called as `step(model, inputs, optimizer)`.
    """
    opt = parse_optimizer(optimizer) if isinstance(optimizer, str) else optimizer
    loss_spec = LossSpec(parse_loss(loss)) if isinstance(loss, str) else loss
    config = Config(
        mode,
        opt,
        device,
        iterations,
        recipe or Recipe(),
        loss_spec,
        free_output,
        step,
        alloc_conf,
        sdpa_backend=sdpa_backend,
        cudnn_version=cudnn_version,
        assume=assume,
    )
    kwargs = tuple((builder_kwargs or {}).items())
    return run(Request(as_builder(model), input_specs(inputs), kwargs, config, gpu, headroom))


def as_builder(model: str | Callable[..., Any] | nn.Module) -> str | Callable[..., Any]:
    """A real module becomes a builder of its meta copy (a fresh copy per simulation)."""
    if not isinstance(model, nn.Module):
        return model
    from .meta.metacopy import to_meta

    def copy() -> nn.Module:
        return to_meta(model)

    copy.__name__ = type(model).__name__
    return copy


def input_specs(inputs: Inputs) -> tuple[InputSpec, ...]:
    if isinstance(inputs, dict):
        return tuple(replace(_spec(v), name=str(k)) for k, v in inputs.items())
    if isinstance(inputs, (str, InputSpec, torch.Tensor)):
        inputs = [inputs]
    return tuple(_spec(x) for x in inputs)


def _spec(value: InputSpec | str | torch.Tensor) -> InputSpec:
    if isinstance(value, InputSpec):
        return value
    if isinstance(value, str):
        return parse_input(value)
    return spec_of(value)


__all__ = [
    "SDPA_BACKENDS",
    "Category",
    "Config",
    "Request",
    "StepFn",
    "analyse",
    "build",
    "plan_for",
    "run",
    "simulate",
    "step_function",
    "trace_model",
]
