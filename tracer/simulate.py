"""The public engine API: build on meta, run the step under the recorder, analyse, return a Result."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from memtrace.tracer import analysis
from memtrace.tracer.assume import Policy
from memtrace.tracer.batch import Batch, as_batch
from memtrace.tracer.data_dependent import resolving
from memtrace.tracer.devices import DeviceModel
from memtrace.tracer.devices.cuda.conv import estimate_json
from memtrace.tracer.devices.cuda.placement import place
from memtrace.tracer.devices.cuda.presets import PRESETS, normalise_gpu_name
from memtrace.tracer.distributed import simulated_world
from memtrace.tracer.errors import MemtraceError, first_line
from memtrace.tracer.gpu import allocator_config, cuda_figures, gpu_notes, gpu_target
from memtrace.tracer.gpu import verdict as verdict_for
from memtrace.tracer.hooks import recording, register_baseline
from memtrace.tracer.layers import ModuleFacts, module_rows
from memtrace.tracer.loader import Built, build_on_meta, load_object, make_inputs, spec_of
from memtrace.tracer.losses import make_loss
from memtrace.tracer.optim_meta import fused_on_meta
from memtrace.tracer.parallel import Parallel
from memtrace.tracer.prepare import materialize
from memtrace.tracer.program import MODES, StepPlan, make_optimizer, run_program
from memtrace.tracer.recipes import Recipe, apply_to_model, cast_inputs, meta_autocast
from memtrace.tracer.recorder import Recorder
from memtrace.tracer.records import (
    Category,
    GpuSpec,
    InputSpec,
    ModelInfo,
    Phase,
    Result,
    Trace,
)
from memtrace.tracer.routing import routed_if, staying_on
from memtrace.tracer.specs import (
    Headroom,
    LossSpec,
    OptimizerSpec,
    check_input_names,
    parse_input,
    parse_loss,
    parse_optimizer,
)
from memtrace.tracer.target_view import TargetGpu, generation_stand_in, target_gpu, target_view
from memtrace.tracer.timeline import step_timeline

StepFn = Callable[..., Any]
SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")


@dataclass(frozen=True)
class Config:
    """How to simulate: the mode, the optimizer, the target device, iterations, the recipe, and the step:
    memtrace's default step with its loss (`loss`, `free_output`), or the user's own `step` function."""

    mode: str = "train"
    optimizer: OptimizerSpec = field(default_factory=lambda: OptimizerSpec("adam"))
    device: str = "cuda"
    iterations: int = 2
    recipe: Recipe = field(default_factory=Recipe)
    loss: LossSpec | None = None  # None: auto
    free_output: bool = False
    step: str | StepFn | None = None
    alloc_conf: str | None = None  # the CUDA allocator's settings; None: PYTORCH_CUDA_ALLOC_CONF etc.
    arch: str | None = None  # the target GPU's compute capability; None: the default (an A100, sm80)
    sdpa_backend: str = "auto"  # --sdpa-backend
    cudnn_version: int | None = None  # --cudnn-version, as cuDNN's integer (91002 for 9.10.2)
    parallel: Parallel | None = None  # --ddp N / --fsdp N: one rank of a data-parallel job
    cuda_version: str | None = None  # the CUDA runtime PyTorch was built with (12.8); None: the default
    repeat_layers: int = 0  # --repeat-layers K: extrapolate a stack of identical layers from K, K+1, K+2
    assume: tuple[tuple[str, str], ...] = ()  # --assume KEY=VALUE: the data-dependent values (assume.py)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise MemtraceError(f"unknown mode {self.mode!r} ({', '.join(MODES)})")
        if self.device not in ("cpu", "cuda"):
            raise MemtraceError(f"unknown device {self.device!r} (cpu or cuda)")
        if self.iterations < 1:
            raise MemtraceError("iterations must be at least 1")
        if self.repeat_layers < 0:
            raise MemtraceError("--repeat-layers must be at least 1 (0: off)")
        if self.step is not None:
            _refuse_with_step(self)
        if self.sdpa_backend not in SDPA_BACKENDS:
            raise MemtraceError(f"unknown --sdpa-backend {self.sdpa_backend!r} ({', '.join(SDPA_BACKENDS)})")
        _check_loss(self.loss)
        _check_gpu_flags(self)
        Policy(self.assume)  # a bad --assume fails before any simulation

    @property
    def targets(self) -> tuple[InputSpec, ...]:
        """The `--target` tensors of a user loss."""
        return self.loss.targets if self.loss is not None else ()

    def step_text(self) -> str:
        if self.step is None:
            return "default"
        return (
            self.step if isinstance(self.step, str) else getattr(self.step, "__qualname__", repr(self.step))
        )

    def loss_text(self) -> str:
        if self.step is not None or self.mode != "train":
            return ""
        return (self.loss or LossSpec()).text()


def _check_loss(loss: LossSpec | None) -> None:
    if loss is None:
        return
    if loss.targets and not loss.is_function:
        raise MemtraceError(f"--target is for --loss FILE.py:FUNC; --loss {loss.name} makes its own targets")
    if loss.class_dim is not None and loss.name != "ce":
        raise MemtraceError("--loss-class-dim is for --loss ce")


def _check_gpu_flags(config: Config) -> None:
    """The GPU's settings need the GPU target; the allocator's are parsed before any simulation."""
    if config.device != "cuda":
        given = {
            "--alloc-conf": config.alloc_conf is not None,
            "--sdpa-backend": config.sdpa_backend != "auto",
            "--cudnn-version": config.cudnn_version is not None,
        }
        for flag, used in given.items():
            if used:
                raise MemtraceError(f"{flag} describes the GPU: it needs --device cuda")
        return
    allocator_config(config.alloc_conf)


def _refuse_with_step(config: Config) -> None:
    """A user's step is their own code: flags that would change it are refused, one line each."""
    loss = config.loss
    changes = {
        "--target": loss is not None and bool(loss.targets),
        "--loss-class-dim": loss is not None and loss.class_dim is not None,
        "--loss": loss is not None,
        "--amp": config.recipe.amp is not None,
        "--accumulate": config.recipe.accumulate > 1,
        "--free-output": config.free_output,
    }
    for flag, given in changes.items():
        if given:
            raise MemtraceError(
                f"{flag} would change your own step: with --step, write it in the step function"
            )


def trace_model(model: nn.Module, inputs: Batch | Sequence[torch.Tensor], config: Config) -> Trace:
    """Run the program on the model's (meta) tensors and return every event.

    The recipe is applied to the model here (cast, checkpoint wrapping): pass a freshly built model.
    """
    batch = as_batch(inputs)
    device = DeviceModel(config.device)
    rec = Recorder(device)
    try:
        with (
            routed_if(config.step is not None, config.device, "meta"),
            simulated_world(config.parallel) as world,
        ):
            plan = plan_for(config)
            notes = materialize(model, batch.args, batch.kwargs)  # lazy and in-forward parameters
            apply_to_model(model, config.recipe)
            batch = cast_inputs(batch, config.recipe.dtype)
            runner = model
            if world is not None:  # DDP or FSDP2 on fake tensors: the model is what the step calls
                runner, batch = world.wrap(model, batch, rec)
            optimizer = None
            if config.mode == "train":
                with fused_on_meta():  # the patch for the step registers the meta kernels
                    optimizer = make_optimizer(config.optimizer, list(model.parameters()), config.device)
            register_baseline(rec, model, batch.tensors(), _parameter_owners(model))
            with (
                gpu_target(config) as gpu,
                device.patched(),
                resolving(
                    Policy(config.assume),
                    lambda: rec.current_module() or type(model).__name__,
                    lambda: rec.iteration,
                    rec.inside_module,
                ) as assumed,
                recording(rec, model),
                generation_stand_in(),
            ):
                run_program(runner, batch, optimizer, plan, rec, config.iterations)
    except MemtraceError:
        raise
    except Exception as exc:
        raise MemtraceError(_failure(rec, model, exc)) from exc
    every_note = (*notes, *gpu_notes(config, gpu))
    return replace(rec.trace(config.iterations), notes=every_note, assumptions=tuple(assumed))


def plan_for(config: Config) -> StepPlan:
    """The step on meta: the recipe's accumulation and the emulated autocast of the target device, the loss,
    or the user's own step function (loaded here, so a GradScaler it makes at import is routed too)."""
    if config.step is not None:
        return StepPlan(config.mode, user_step=step_function(config.step))
    autocast = meta_autocast(config.device, config.recipe.amp)
    scaler = None
    if config.recipe.amp == "fp16" and config.mode == "train":
        from memtrace.tracer.autocast import MetaGradScaler

        scaler = MetaGradScaler(config.device)  # fp16 training scales the loss
    loss_fn = make_loss(config.loss)
    return StepPlan(config.mode, config.recipe.accumulate, autocast, scaler, loss_fn, config.free_output)


def step_function(step: str | StepFn) -> StepFn:
    """The user's step: a callable, or `FILE.py:FUNC` imported anew (its import-time state is its own)."""
    fn = load_object(step, "--step", fresh=True) if isinstance(step, str) else step
    if not callable(fn):
        raise MemtraceError(f"--step {step!r} is not callable")
    return fn  # type: ignore[no-any-return]


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
    data_op = re.search(r"register_meta function for (torch\.\w+)\(\)", text)
    if data_op or "data-dependent" in text.lower():
        from memtrace.tracer.assume import KEYS

        op = data_op.group(1) if data_op else "an op"
        return (
            f"the {rec.phase.value} pass failed in module {where!r}: {op} has a data-dependent output that "
            f"meta cannot know; choose it with --assume KEY=VALUE (keys: {', '.join(KEYS)})"
        )
    hint = ""
    if "meta tensors" in text:
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
    last = config.iterations - 1
    requested, cuda_trace, stats = trace, None, None
    if config.device == "cuda":  # every storage counts for its caching-allocator block
        cuda_trace, stats = place(trace, allocator_config(config.alloc_conf))
        trace = cuda_trace
    rounding = analysis.exact
    peak = analysis.step_peak(trace, last, rounding)
    first = analysis.step_peak(trace, 0, rounding).bytes
    types = {name: type(m).__name__ for name, m in model.named_modules()}
    cuda, reserved = None, tuple[int, ...]()
    if stats is not None:  # the bytes reserved after each event, from the placement's replay
        reserved = tuple(stats.reserved_after[len(trace.baseline) :])
        asked = max(analysis.step_peak(requested, it).bytes for it in range(config.iterations))
        cuda = cuda_figures(peak.bytes, asked, stats, config.arch)
        cuda = replace(cuda, cudnn_workspace_estimate=estimate_json(trace.workspace_estimate))
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
        verdict=verdict_for(gpu, headroom, peak.bytes, cuda),
        cuda=cuda,
        notes=((f"model built on meta via the {built_path} path",) if built_path != "meta" else ())
        + trace.notes,
        step=config.step_text(),
        loss=config.loss_text(),
        free_output=config.free_output,
        parallel=config.parallel.text() if config.parallel is not None else "",
        timeline=step_timeline(trace, last, peak.seq, reserved),
        assumptions=trace.assumptions,
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
        from memtrace.tracer.repeat import run_repeated

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
    from memtrace.tracer.metacopy import to_meta

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


__all__ = ["Category", "Config", "Request", "analyse", "build", "run", "simulate", "trace_model"]
