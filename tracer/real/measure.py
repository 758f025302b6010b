"""The real step, measured: the same program on real tensors, for `memtrace verify` and the tests.

CPU: the allocator's events under `torch.profiler.profile(profile_memory=True)`, after one warm-up step; peak
= bytes live at the step's start + the largest rise of the allocation events in time order. CUDA: the peak
statistics of the caching allocator (`torch.cuda.memory_stats()`) over the simulated number of steps, from
a reset, optionally with a memory snapshot recorded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import MemtraceError, first_line
from ..engine.batch import Batch
from ..engine.data_observer import Observer
from ..engine.loader import Built, load_object, split_result
from ..engine.losses import make_loss
from ..engine.program import NullObserver, StepPlan, make_optimizer, run_program
from ..engine.recipes import apply_to_model, cast_inputs, real_autocast
from ..engine.tensor_facts import plain_tensors
from ..engine.trace import generate_kwargs
from ..meta.compat_bnb import held_tensors
from ..meta.routing import routed, routed_if
from ..simulate import Config, step_batch, step_function, step_specs


@dataclass(frozen=True)
class Measured:
    """A CPU measurement: the steady-state peak, what was live at the step's start, and the largest rise."""

    peak: int
    start: int
    rise: int
    allocations: tuple[tuple[int, str], ...]  # (signed size, op) in time order
    assumptions: tuple[tuple[str, str], ...] = ()  # the step's data-dependent counts, as --assume pairs
    first_step_s: float = 0.0  # the warm-up step's wall time: a compiled step's compiling is in it


@dataclass(frozen=True)
class CudaMeasured:
    """The caching allocator's peaks over the steps: what `max_memory_allocated` and friends return."""

    allocated_peak: int
    reserved_peak: int
    requested_peak: int
    assumptions: tuple[tuple[str, str], ...] = ()  # the step's data-dependent counts, as --assume pairs


def _walk(nodes: Sequence[Any]) -> Iterator[Any]:
    for n in nodes:
        yield n
        yield from _walk(n.children)


def allocation_events(prof: Any) -> list[tuple[int, int, str]]:
    """(time, signed size, op) of every CPU allocation and free the profiler saw, in time order."""
    from torch._C._profiler import _EventType

    out = []
    for n in _walk(prof.profiler.kineto_results.experimental_event_tree()):
        if n.tag == _EventType.Allocation:
            out.append((n.start_time_ns, int(n.extra_fields.alloc_size), n.parent.name if n.parent else ""))
    out.sort(key=lambda e: e[0])
    return out


def largest_rise(sizes: Iterable[int]) -> int:
    """The highest level signed allocation sizes reach above their start."""
    level = rise = 0
    for size in sizes:
        level += size
        rise = max(rise, level)
    return rise


def live_bytes(model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes of the distinct CPU storages the step starts with: model (its parameters, buffers and the plain
    tensor attributes a step may set, such as gpt-fast's `freqs_cis`), batch, optimizer state, gradients."""
    tensors: list[torch.Tensor] = [*model.parameters(), *model.buffers(), *batch.tensors()]
    tensors += [v for m in model.modules() for v in vars(m).values() if isinstance(v, torch.Tensor)]
    tensors += [t for t, _ in held_tensors(model)]  # a quantized weight's absmax and code tables
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    seen: dict[int, int] = {}
    for t in (inner for held in tensors for inner in plain_tensors(held)):
        if t.device.type == "cpu":
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def real_plan(config: Config, device: str) -> StepPlan:
    """The simulated plan's twin on real tensors: real autocast and GradScaler, the same loss or user step."""
    if config.step is not None:
        with routed(device, device):
            return StepPlan(config.mode, user_step=step_function(config.step))
    recipe = config.recipe
    scaler = None
    if recipe.amp == "fp16" and config.mode == "train":
        # init_scale 1: the default 2**16 overflows fp16 on random data, and the step would be skipped
        scaler = torch.amp.GradScaler(device, init_scale=1.0)
    loss_fn = make_loss(config.loss)
    autocast = real_autocast(device, recipe.amp)
    return StepPlan(
        config.mode,
        recipe.accumulate,
        autocast,
        scaler,
        loss_fn,
        config.free_output,
        generate=generate_kwargs(config),
    )


def _prepared(model: nn.Module, batch: Batch, config: Config, device: str) -> torch.optim.Optimizer | None:
    """Recipe applied, lazy modules materialized by one forward (as a user does before building the
    optimizer), the optimizer built."""
    from ..engine.prepare import lazy_names

    apply_to_model(model, config.recipe)
    if lazy_names(model):
        with torch.no_grad():
            model(*batch.args, **batch.kwargs)
    if config.mode != "train":
        return None
    return make_optimizer(config.optimizer, list(model.parameters()), device)


def observe_steps(model: nn.Module, batch: Batch, config: Config, device: str) -> tuple[tuple[str, str], ...]:
    """The data-dependent values of the steps (as many as the simulation runs), as `--assume` pairs. An
    observing dispatch mode perturbs autocast's cast cache, so this runs on a model of its own, never in
    the measured run."""
    batch = cast_inputs(batch, config.recipe.dtype)
    opt = _prepared(model, batch, config, device)
    plan = real_plan(config, device)
    observer = Observer()
    with routed_if(config.step is not None, device, device), sdpa_backend(config.sdpa_backend), observer:
        for i in range(config.iterations):
            if i:
                observer.mark()
            run_program(model, batch, opt, plan, NullObserver(), iterations=1, first=i)
    return observer.assumptions()


def measure_cpu(model: nn.Module, batch: Batch, config: Config) -> Measured:
    """One warm-up step, then the steady-state step under the profiler; model and batch on the CPU."""
    batch = cast_inputs(batch, config.recipe.dtype)
    opt = _prepared(model, batch, config, "cpu")
    plan = real_plan(config, "cpu")
    with routed_if(config.step is not None, "cpu", "cpu"):
        began = time.perf_counter()
        run_program(model, batch, opt, plan, NullObserver(), iterations=1)
        first_step_s = time.perf_counter() - began
        start = live_bytes(model, batch, opt)
        if plan.scaler is not None:
            scaler = plan.scaler
            start += sum(
                t.untyped_storage().nbytes() for t in (scaler._scale, scaler._growth_tracker) if t is not None
            )
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        ) as p:
            run_program(model, batch, opt, plan, NullObserver(), iterations=1, first=1)
    events = allocation_events(p)
    rise = largest_rise(size for _, size, _ in events)
    allocations = tuple((s, op) for _, s, op in events)
    return Measured(start + rise, start, rise, allocations, first_step_s=first_step_s)


@contextlib.contextmanager
def sdpa_backend(name: str) -> Iterator[None]:
    """`--sdpa-backend NAME` on the real GPU: that backend alone, as the simulation enables it."""
    if name == "auto":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    with sdpa_kernel([backends[name]]):
        yield


def measure_cuda(
    model: nn.Module, batch: Batch, config: Config, snapshot: Path | None = None
) -> CudaMeasured:
    """The steps on the GPU from reset peak statistics; model and batch on the GPU."""
    batch = cast_inputs(batch, config.recipe.dtype)
    opt = _prepared(model, batch, config, "cuda")
    plan = real_plan(config, "cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    if snapshot is not None:
        torch.cuda.memory._record_memory_history(max_entries=1_000_000)
    with routed_if(config.step is not None, "cuda", "cuda"), sdpa_backend(config.sdpa_backend):
        run_program(model, batch, opt, plan, NullObserver(), iterations=config.iterations)
    torch.cuda.synchronize()
    if snapshot is not None:
        torch.cuda.memory._dump_snapshot(str(snapshot))
        torch.cuda.memory._record_memory_history(enabled=None)
    stats = torch.cuda.memory_stats()
    return CudaMeasured(
        int(stats.get("allocated_bytes.all.peak", 0)),
        int(stats.get("reserved_bytes.all.peak", 0)),
        int(stats.get("requested_bytes.all.peak", 0)),
    )


def on_this_gpu(request: Any) -> Any:
    """The request aimed at the GPU of this machine: its compute capability and cuDNN version, where the
    request names none (verify holds the prediction for *this* GPU against it). Unchanged off CUDA."""
    config: Config = request.config
    if config.device != "cuda" or not torch.cuda.is_available():
        return request
    arch = config.arch or "{}.{}".format(*torch.cuda.get_device_capability())
    cudnn = config.cudnn_version
    if cudnn is None and torch.backends.cudnn.is_available():
        cudnn = torch.backends.cudnn.version()
    cuda = config.cuda_version or torch.version.cuda
    return replace(request, config=replace(config, arch=arch, cudnn_version=cudnn, cuda_version=cuda))


def _built(request: Any, fn: Callable[..., Any], device: str) -> tuple[nn.Module, Batch]:
    """The model built for real on `device`, and the step's batch, from seed 0: the same weights and inputs
    every time (data-dependent counts repeat)."""
    torch.manual_seed(0)
    try:
        model, examples = split_result(fn(**dict(request.builder_kwargs)), "builder")
        model.to(device)
    except MemtraceError:
        raise
    except Exception as exc:
        raise MemtraceError(f"building the model for real failed: {first_line(exc)}") from exc
    specs = step_specs(request, Built(model, examples, "real"))
    return model, step_batch(request, specs, device)


def _observed(request: Any, fn: Callable[..., Any], device: str) -> tuple[tuple[str, str], ...]:
    """The step's data-dependent values, on a model of their own (freed before the measured run)."""
    model, batch = _built(request, fn, device)
    try:
        return observe_steps(model, batch, request.config, device)
    except Exception as exc:
        raise MemtraceError(f"the real step failed on {device}: {first_line(exc)}") from exc
    finally:
        del model, batch
        if device == "cuda":
            torch.cuda.empty_cache()


def measure_request(
    request: Any, snapshot: Path | None = None, observe: bool = False
) -> Measured | CudaMeasured:
    """Build the model for real on the target device and measure the step the request describes; with
    `observe`, also count its data-dependent values (`Measured.assumptions`)."""

    config: Config = request.config
    device = config.device
    if device == "cuda" and not torch.cuda.is_available():
        raise MemtraceError("no CUDA device here: `--device cpu` verifies against the CPU allocator")
    fn = load_object(request.builder) if isinstance(request.builder, str) else request.builder
    counts = _observed(request, fn, device) if observe else ()
    model, batch = _built(request, fn, device)
    try:
        if device == "cuda":
            return replace(measure_cuda(model, batch, config, snapshot), assumptions=counts)
        return replace(measure_cpu(model, batch, config), assumptions=counts)
    except MemtraceError:
        raise
    except Exception as exc:  # a CUDA out-of-memory error among them: the prediction said so, or should have
        raise MemtraceError(f"the real step failed on {device}: {first_line(exc)}") from exc
