"""The public engine API: build on meta, run the step under the recorder, analyse, return a Result."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .analysis.compiled_range import with_compiled_range
from .analysis.compose import Run, analyse, compose
from .core.errors import MemtraceError
from .core.generation import GenerateSpec
from .core.parallel import Parallel, parallel_from_flags
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
    parse_gpu,
    parse_headroom,
    parse_input,
    parse_loss,
    parse_optimizer,
)
from .engine.batch import Batch
from .engine.config import SDPA_BACKENDS, Config, StepFn
from .engine.loader import Built, build_on_meta, load_object, make_inputs, spec_of
from .engine.recipes import Recipe
from .engine.trace import ProbeNeeded, plan_for, step_function, trace_model
from .meta.compat_bnb import moving_quantizes
from .meta.compiled import compile_options
from .meta.routing import staying_on
from .meta.target_view import Seen, TargetGpu, target_gpu, target_view


def build(builder: str | Callable[..., Any], builder_kwargs: dict[str, Any] | None = None) -> Built:
    fn = load_object(builder) if isinstance(builder, str) else builder
    if not callable(fn):
        raise MemtraceError(f"builder {builder!r} is not callable")
    name = builder if isinstance(builder, str) else getattr(fn, "__name__", repr(fn))
    with staying_on("meta"), moving_quantizes():  # `.to("cuda")` of a builder told a GPU is there
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
    return run_recorded(request).result


def view_target(request: Request) -> TargetGpu | None:
    """The GPU the user's code is told about while it runs (target_view.py)."""
    return target_gpu(request.config.device, request.gpu, request.config.arch)


def run_traced(request: Request) -> tuple[Trace, Result]:
    """`run`, also giving the recorded trace (sizes as requested), for the exports."""
    ran = run_recorded(request)
    return ran.trace, ran.result


def run_recorded(request: Request) -> Run:
    """`run`, keeping what the outputs need beside the Result: the trace as recorded and, on cuda, its one
    placement through the caching allocator (`Run.placed`). The user's code (the builder's module, the
    builder, the step's module and the step) sees the target GPU while it runs."""
    request = with_gpu_arch(request)
    ran, seen = _recorded(request, compiling=True)
    if not seen.compiled.planned_for_the_cpu:
        return ran
    try:
        eager, _ = _recorded(request, compiling=False)  # the other end of a compiled step's CUDA range
    except MemtraceError as exc:
        note = f"torch.compile on cuda: inductor's CPU plan only; the eager step did not simulate: {exc}"
        return replace(ran, result=replace(ran.result, notes=(*ran.result.notes, note)))
    return replace(ran, result=with_compiled_range(ran.result, eager.result, request.gpu, request.headroom))


def _recorded(request: Request, compiling: bool) -> tuple[Run, Seen]:
    with target_view(view_target(request), compiling) as seen:
        built, specs, trace = _built_and_traced(request)
    trace = replace(trace, notes=(*trace.notes, *seen.lines()))
    ran = compose(trace, built.model, built.path, specs, request.config, request.gpu, request.headroom)
    return ran, seen


def _built_and_traced(request: Request) -> tuple[Built, list[InputSpec], Trace]:
    """The model built and its step traced, first without the probing forward (`engine/prepare.py`); if the
    step created a parameter, buffer or submodule, once more from a fresh build, probed first."""
    for probe in (False, True):
        built = build(request.builder, dict(request.builder_kwargs))
        if request.transform is not None:
            request.transform(built.model)
        specs = step_specs(request, built)
        try:
            return built, specs, trace_model(built.model, step_batch(request, specs), request.config, probe)
        except ProbeNeeded:
            continue
    raise AssertionError("unreachable: the probed trace raises no ProbeNeeded")


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
    if request.config.generate is not None:
        request.config.generate.tokens()  # a symbolic --max-new-tokens: refused as an --input's symbol is
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
    gpu: str | GpuSpec | None = None,
    headroom: str | Headroom | None = None,
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
    return run(
        request(
            model,
            inputs,
            args=builder_kwargs or {},
            mode=mode,
            optimizer=optimizer,
            device=device,
            gpu=gpu,
            headroom=headroom,
            iterations=iterations,
            recipe=recipe,
            loss=loss,
            free_output=free_output,
            step=step,
            sdpa_backend=sdpa_backend,
            cudnn_version=cudnn_version,
            alloc_conf=alloc_conf,
            assume=assume,
        )
    )


def request(
    builder: str | Callable[..., Any] | nn.Module,
    inputs: Inputs = (),
    *,
    args: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
    mode: str = "train",
    optimizer: str | OptimizerSpec = "adam",
    device: str = "cuda",
    gpu: str | GpuSpec | None = None,
    headroom: str | Headroom | None = None,
    iterations: int = 2,
    recipe: Recipe | None = None,
    amp: str | None = None,
    dtype: str | None = None,
    checkpoint: Iterable[str] = (),
    accumulate: int = 1,
    compile_model: bool = False,
    compile_mode: str | None = None,
    compile_backend: str | None = None,
    loss: str | LossSpec | None = None,
    loss_class_dim: int | None = None,
    targets: Iterable[InputSpec | str] = (),
    free_output: bool = False,
    step: str | StepFn | None = None,
    alloc_conf: str | None = None,
    arch: str | None = None,
    sdpa_backend: str = "auto",
    cudnn_version: int | None = None,
    cuda_version: str | None = None,
    parallel: Parallel | None = None,
    ddp: int | str | None = None,
    fsdp: int | str | None = None,
    rank: int = 0,
    bucket_cap_mb: float | None = None,
    reshard_after_forward: str = "yes",
    fsdp_wrap: Iterable[str] = (),
    fsdp_param_dtype: str | None = None,
    fsdp_reduce_dtype: str | None = None,
    cpu_offload: bool = False,
    repeat_layers: int = 0,
    assume: Iterable[tuple[str, str]] = (),
    max_new_tokens: int | str | None = None,
    kv_cache: str | None = None,
    sample: bool = False,
    num_beams: int = 1,
    generate_args: Iterable[tuple[str, Any]] = (),
) -> Request:
    """The one Request of user-level values, as the CLI's flags, the pytest marker's keywords, `simulate()`,
    the monitor and `bench` give them: strings are parsed (`"adamw:fused=true"`, `"rtx4070"`, `"4x512:int64"`)
    and parsed specs taken as they are, each checked once, before anything is built.

    `builder` is `"FILE.py:FUNC"`, a callable, or a real `nn.Module` (copied to meta, weights left out);
    `args` the builder's keyword arguments; `recipe` a whole Recipe, else one of `amp`, `dtype`,
    `checkpoint`, `accumulate` and the `compile_*` flags; `parallel` a whole Parallel, else the
    `--ddp`/`--fsdp` flags' values."""
    compiled = compile_options(compile_model, compile_mode, compile_backend)
    recipe = recipe or Recipe(amp, dtype, tuple(checkpoint), int(accumulate), compiled)
    opt = parse_optimizer(optimizer) if isinstance(optimizer, str) else optimizer
    target_specs = tuple(_spec(t) for t in targets)
    loss_spec = loss if isinstance(loss, LossSpec) else None
    if loss_spec is None and (loss is not None or loss_class_dim is not None or target_specs):
        loss_spec = LossSpec(
            parse_loss(loss) if isinstance(loss, str) else "auto", target_specs, loss_class_dim
        )
    if parallel is None:
        parallel = parallel_from_flags(
            ddp,
            fsdp,
            rank,
            bucket_cap_mb,
            reshard_after_forward,
            tuple(fsdp_wrap),
            fsdp_param_dtype,
            fsdp_reduce_dtype,
            cpu_offload,
        )
    config = Config(
        mode,
        opt,
        device,
        iterations,
        recipe,
        loss_spec,
        free_output,
        step,
        alloc_conf,
        arch,
        sdpa_backend=sdpa_backend,
        cudnn_version=cudnn_version,
        parallel=parallel,
        cuda_version=cuda_version,
        repeat_layers=repeat_layers,
        assume=tuple(assume),
        generate=generate_spec(max_new_tokens, kv_cache, sample, num_beams, tuple(generate_args)),
    )
    kwargs = tuple(args.items()) if isinstance(args, Mapping) else tuple(args)
    return Request(
        as_builder(builder),
        input_specs(inputs),
        kwargs,
        config,
        parse_gpu(gpu, option="gpu") if isinstance(gpu, str) else gpu,
        parse_headroom(headroom, option="headroom") if isinstance(headroom, str) else headroom,
    )


def generate_spec(
    max_new_tokens: int | str | None,
    kv_cache: str | None,
    sample: bool,
    num_beams: int,
    args: tuple[tuple[str, Any], ...],
) -> GenerateSpec | None:
    """The generation flags as one spec; the others without --max-new-tokens are refused in one line."""
    if max_new_tokens is None:
        given = {"--kv-cache": kv_cache is not None, "--sample": sample, "--num-beams": num_beams != 1}
        given["--generate-arg"] = bool(args)
        for flag, used in given.items():
            if used:
                raise MemtraceError(f"{flag} is for --mode generate, with --max-new-tokens N")
        return None
    return GenerateSpec(max_new_tokens, kv_cache, sample, num_beams, args)


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
    "Run",
    "StepFn",
    "analyse",
    "build",
    "plan_for",
    "request",
    "run",
    "run_recorded",
    "simulate",
    "step_function",
    "trace_model",
]
