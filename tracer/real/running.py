"""A real training run read into the engine's terms, for `memtrace.monitor` and the trainer integrations.

What the user built becomes what a simulation takes: the optimizer object becomes an `OptimizerSpec` (its
class and the constructor arguments that differ from the class defaults), the autocast state an `--amp`
value, a batch the model is called with becomes input specs, the module's device the simulated one. Also
here: the real device's memory (for the fit verdict) and the CUDA caching allocator's readings.

Limits: per-parameter-group settings are not read (the optimizer's `defaults` are), nor arguments that are
not plain values (`betas`, a tensor `lr`): neither changes what the step allocates for PyTorch's optimizers,
except a per-group `weight_decay` under single-tensor Adam (a temporary per parameter).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.errors import MemtraceError
from ..core.records import GpuSpec, InputSpec, Result
from ..core.specs import OptimizerSpec
from ..simulate import input_specs, request, run
from .measure import on_this_gpu

Plain = bool | int | float | str | None
AMP_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class Reading:
    """One window of a real run, from the last reading: `max_memory_allocated`, `max_memory_reserved`,
    and the current `memory_allocated` / `memory_reserved` (None where the device gives none)."""

    peak_bytes: int
    reserved_bytes: int | None = None
    allocated_bytes: int | None = None
    current_reserved_bytes: int | None = None


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer inside wrappers that keep it as `.optimizer` (accelerate's, itself an Optimizer;
    Lightning's)."""
    for _ in range(8):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer:
            break
        optimizer = inner
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None


def optimizer_spec(optimizer: Any) -> OptimizerSpec:
    """The optimizer's class and its plain constructor arguments that differ from the class's defaults."""
    opt = unwrap_optimizer(optimizer)
    if opt is None:
        if optimizer is not None:
            raise MemtraceError(f"{type(optimizer).__name__} is not a torch.optim.Optimizer (nor wraps one)")
        return OptimizerSpec("none")
    cls = type(opt)
    if getattr(torch.optim, cls.__name__, None) is cls:
        name = cls.__name__.lower()
    else:
        name = f"{cls.__module__}:{cls.__qualname__}"
    return OptimizerSpec(name, _changed_arguments(cls, opt.defaults))


def _changed_arguments(cls: type, defaults: Mapping[str, Any]) -> tuple[tuple[str, Plain], ...]:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    out: list[tuple[str, Plain]] = []
    for key, value in defaults.items():
        if value is None or not isinstance(value, bool | int | float | str):
            continue  # None: PyTorch's own choice (foreach on CUDA); betas, tensors: no memory effect
        param = params.get(key)
        if param is None and not takes_any:
            continue
        if param is not None and param.default is not inspect.Parameter.empty and param.default == value:
            continue
        out.append((key, value))
    return tuple(out)


def autocast_state(device_type: str) -> str | None:
    """`bf16` or `fp16` when autocast is on for the device now, else None."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return AMP_NAMES.get(torch.get_autocast_dtype(device_type))


def module_device(model: nn.Module) -> str:
    """The simulated device for a real module: cuda when its parameters are on a GPU, else cpu."""
    return "cuda" if cuda_index(model) is not None else "cpu"


def cuda_index(model: nn.Module) -> int | None:
    """The GPU the module's first tensor is on (the current one for a bare `cuda`), None off CUDA."""
    for t in (*model.parameters(), *model.buffers()):
        if t.device.type != "cuda":
            return None
        return t.device.index if t.device.index is not None else torch.cuda.current_device()
    return None


def batch_specs(batch: Any) -> tuple[InputSpec, ...]:
    """What the model is called with: a tensor, a tuple or list of tensors, or a mapping of keyword ones."""
    if isinstance(batch, Mapping):
        batch = dict(batch)
    elif isinstance(batch, list):
        batch = tuple(batch)
    if isinstance(batch, dict):
        bad = [str(k) for k, v in batch.items() if not isinstance(v, torch.Tensor)]
    elif isinstance(batch, tuple):
        bad = [str(i) for i, v in enumerate(batch) if not isinstance(v, torch.Tensor)]
    else:
        bad = [] if isinstance(batch, torch.Tensor) else ["batch"]
    if bad:
        raise MemtraceError(
            f"the batch holds non-tensor entries ({', '.join(bad[:4])}): pass what the model is called with"
        )
    return input_specs(batch)


@dataclass(frozen=True)
class StepSettings:
    """How the real step runs, beyond the model, the batch and the optimizer."""

    amp: str | None = None
    checkpoint: tuple[str, ...] = ()
    accumulate: int = 1
    loss: str | None = None
    free_output: bool = False
    step: Callable[..., Any] | None = None
    gpu: GpuSpec | None = None


def predict(
    model: nn.Module,
    batch: Any,
    optimizer: Any,
    settings: StepSettings,
    builder: Callable[[], nn.Module] | None = None,
) -> Result:
    """The step on meta: the module copied without its weights (or `builder`'s meta module), the batch's
    shapes, the optimizer's spec, on the module's device (the GPU it runs on, when it is on one)."""
    specs = batch_specs(batch)
    req = request(
        builder or model,
        specs,
        optimizer=optimizer_spec(optimizer),
        device=module_device(model),
        gpu=settings.gpu,
        amp=settings.amp,
        checkpoint=settings.checkpoint,
        accumulate=settings.accumulate,
        loss=settings.loss,
        free_output=settings.free_output,
        step=settings.step,
    )
    with outside_the_step():
        return run(on_this_gpu(req))


@contextmanager
def outside_the_step() -> Iterator[None]:
    """The simulation runs as from the top level wherever the caller is: gradients on, autocast off and its
    nesting at zero (the emulated autocast is PyTorch's own state: nested in the user's region, its weight
    casts would outlive the simulated step), all restored after."""
    devices = ("cpu", "cuda")
    enabled = {d: torch.is_autocast_enabled(d) for d in devices}
    levels = 0
    while torch.autocast_decrement_nesting() >= 0:
        levels += 1
    torch.autocast_increment_nesting()  # the decrement that went below zero
    try:
        for d in devices:
            torch.set_autocast_enabled(d, False)
        with torch.enable_grad():
            yield
    finally:
        for d in devices:
            torch.set_autocast_enabled(d, enabled[d])
        for _ in range(levels):
            torch.autocast_increment_nesting()


def this_device(model: nn.Module) -> GpuSpec:
    """The memory of the device the module is on: its GPU's, or this machine's RAM."""
    index = cuda_index(model)
    if index is not None:
        props = torch.cuda.get_device_properties(index)
        return GpuSpec(torch.cuda.get_device_name(index), int(props.total_memory))
    return GpuSpec("this machine's RAM", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def cuda_reading(index: int) -> Reading:
    """The caching allocator's peaks on GPU `index` since the last reset and its current figures; then
    resets the peaks, so the next reading is the next window's."""
    reading = Reading(
        int(torch.cuda.max_memory_allocated(index)),
        int(torch.cuda.max_memory_reserved(index)),
        int(torch.cuda.memory_allocated(index)),
        int(torch.cuda.memory_reserved(index)),
    )
    torch.cuda.reset_peak_memory_stats(index)
    return reading


@contextmanager
def rng_kept(loader: Any) -> Iterator[None]:
    """Drawing a batch ahead of the run leaves the random state (global and the sampler's) as it was."""
    generator = getattr(getattr(loader, "sampler", None), "generator", None)
    state = generator.get_state() if isinstance(generator, torch.Generator) else None
    with torch.random.fork_rng(devices=[]):
        yield
    if state is not None and isinstance(generator, torch.Generator):
        generator.set_state(state)


def first_batch(loader: Any) -> Any:
    """The first batch of a data loader (the torch DataLoader under accelerate's wrapper), the run's random
    state untouched."""
    base = getattr(loader, "base_dataloader", loader)
    with rng_kept(base):
        it = iter(base)
        try:
            return next(it)
        except StopIteration:
            raise MemtraceError("the training data loader is empty: there is no step to predict") from None
        finally:
            del it
