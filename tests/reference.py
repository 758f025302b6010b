"""The ground truth: the same step on real CPU tensors, measured by the CPU allocator.

Peak = bytes live at the step's start + the largest rise of the profiler's allocation events in time order.
One warm-up step runs first so lazily created optimizer state exists, as in the simulated steady state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from memtrace.tracer.batch import Batch
from memtrace.tracer.loader import load_object
from memtrace.tracer.losses import make_loss
from memtrace.tracer.program import NullObserver, StepPlan, make_optimizer, run_program
from memtrace.tracer.recipes import Recipe, apply_to_model, cast_inputs, real_autocast
from memtrace.tracer.routing import routed
from memtrace.tracer.simulate import Config
from memtrace.tracer.specs import OptimizerSpec


@dataclass(frozen=True)
class Measured:
    peak: int
    start: int
    rise: int
    allocations: tuple[tuple[int, str], ...]  # (signed size, op) in time order


def _walk(nodes: Sequence[Any]) -> Iterator[Any]:
    for n in nodes:
        yield n
        yield from _walk(n.children)


def allocation_events(prof: Any) -> list[tuple[int, int, str]]:
    out = []
    for n in _walk(prof.profiler.kineto_results.experimental_event_tree()):
        if n.tag == _EventType.Allocation:
            out.append((n.start_time_ns, int(n.extra_fields.alloc_size), n.parent.name if n.parent else ""))
    out.sort(key=lambda e: e[0])
    return out


def live_bytes(model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer | None) -> int:
    tensors: list[torch.Tensor] = [*model.parameters(), *model.buffers(), *batch.tensors()]
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    seen: dict[int, int] = {}
    for t in tensors:
        if t.device.type == "cpu":
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def reference_plan(config: Config) -> StepPlan:
    """The simulated plan's twin on real CPU tensors: real autocast and GradScaler, the same loss or step."""
    if config.step is not None:
        with routed("cpu", "cpu"):
            step = load_object(config.step, "--step") if isinstance(config.step, str) else config.step
        return StepPlan(config.mode, user_step=step)
    recipe = config.recipe
    scaler = None
    if recipe.amp == "fp16" and config.mode == "train":
        # init_scale 1: the default 2**16 overflows fp16 on random data, and the step would be skipped
        scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    autocast = real_autocast("cpu", recipe.amp)
    loss_fn = make_loss(config.loss)
    return StepPlan(config.mode, recipe.accumulate, autocast, scaler, loss_fn, config.free_output)


def measure(
    model: nn.Module,
    batch: Batch | Sequence[torch.Tensor],
    mode: str = "train",
    optimizer: OptimizerSpec | None = None,
    recipe: Recipe | None = None,
    config: Config | None = None,
) -> Measured:
    """Real CPU run of the program (with the recipe applied); the model and inputs must be on the CPU.

    `config` describes the step in full (loss, free output, the user's step); without it, `mode`,
    `optimizer` and `recipe` do.
    """
    if config is None:
        config = Config(mode, optimizer or OptimizerSpec("adam"), "cpu", recipe=recipe or Recipe())
    if not isinstance(batch, Batch):
        batch = Batch(tuple(batch))
    apply_to_model(model, config.recipe)
    batch = cast_inputs(batch, config.recipe.dtype)
    opt = None
    if config.mode == "train":
        opt = make_optimizer(config.optimizer, list(model.parameters()), "cpu")
    plan = reference_plan(config)
    with routed("cpu", "cpu") if config.step is not None else contextlib.nullcontext():
        run_program(model, batch, opt, plan, NullObserver(), iterations=1)
        start = live_bytes(model, batch, opt)
        if plan.scaler is not None:
            scaler = plan.scaler
            start += sum(
                t.untyped_storage().nbytes() for t in (scaler._scale, scaler._growth_tracker) if t is not None
            )
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run_program(model, batch, opt, plan, NullObserver(), iterations=1, first=1)
    events = allocation_events(prof)
    rise = largest_rise(size for _, size, _ in events)
    return Measured(start + rise, start, rise, tuple((s, op) for _, s, op in events))


def largest_rise(sizes: Iterable[int]) -> int:
    """The highest level signed allocation sizes reach above their start."""
    level = rise = 0
    for size in sizes:
        level += size
        rise = max(rise, level)
    return rise


def measured_op_rise(func: Callable[..., Any], args: tuple[Any, ...]) -> int:
    """The largest rise of the CPU allocator while one op runs (its outputs included, kept alive)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = func(*args)
    del out
    return largest_rise(size for _, size, _ in allocation_events(prof))


def _on_meta(t: Any) -> Any:
    if isinstance(t, torch.Tensor):
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
    return t


def predicted_op_rise(func: Callable[..., Any], args: tuple[Any, ...]) -> int:
    """The same op on meta tensors, its outputs and workspace replayed by the recorder's CPU rules."""
    from memtrace.tracer.devices import DeviceModel
    from memtrace.tracer.recorder import Recorder
    from memtrace.tracer.records import Kind

    meta_args = tuple(_on_meta(a) for a in args)
    out = func(*meta_args)
    rec = Recorder(DeviceModel("cpu"))
    rec.on_op(func, meta_args, {}, out)
    return largest_rise(e.nbytes if e.kind is Kind.ALLOC else -e.nbytes for e in rec.events)
