"""The ground truth: the same step on real CPU tensors, measured by the CPU allocator
(tracer/real/measure.py).

Peak = bytes live at the step's start + the largest rise of the profiler's allocation events in time order.
One warm-up step runs first so lazily created optimizer state exists, as in the simulated steady state.
Also the op-level reference the rule tests share: one op's largest rise, measured and predicted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from memtrace.tracer.core.specs import OptimizerSpec
from memtrace.tracer.engine.batch import Batch, as_batch
from memtrace.tracer.engine.recipes import Recipe
from memtrace.tracer.real.measure import Measured, allocation_events, largest_rise, measure_cpu
from memtrace.tracer.simulate import Config

__all__ = [
    "Measured",
    "allocation_events",
    "largest_rise",
    "measure",
    "measured_op_rise",
    "predicted_op_rise",
]


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
    return measure_cpu(model, as_batch(batch), config)


def measured_op_rise(func: Callable[..., Any], args: tuple[Any, ...]) -> int:
    """The largest rise of the CPU allocator while one op runs (its outputs included, kept alive)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = func(*args)
    del out
    return largest_rise(size for _, size, _ in allocation_events(prof))


def on_meta(t: Any) -> Any:
    """A tensor's meta twin (same shape, strides and dtype); anything else as it is."""
    if isinstance(t, torch.Tensor):
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
    return t


def predicted_op_rise(func: Callable[..., Any], args: tuple[Any, ...]) -> int:
    """The same op on meta tensors, its outputs and workspace replayed by the recorder's CPU rules."""
    from memtrace.tracer.engine.device_model import DeviceModel
    from memtrace.tracer.engine.recorder import Recorder

    meta_args = tuple(on_meta(a) for a in args)
    out = func(*meta_args)
    rec = Recorder(DeviceModel("cpu"))
    rec.on_op(func, meta_args, {}, out)
    return largest_rise(event_sizes(rec.events))


def event_sizes(events: Sequence[Any]) -> list[int]:
    """Recorded events as signed sizes: an allocation's bytes, a free's negated."""
    from memtrace.tracer.core.records import Kind

    return [e.nbytes if e.kind is Kind.ALLOC else -e.nbytes for e in events]


def workspace_sizes(work: Any) -> list[int]:
    """A device rule's workspace as signed sizes, its allocations and frees in order (what it leaves
    allocated is freed at the end)."""
    if work is None:
        return []
    live: dict[int, int] = {}
    out: list[int] = []
    for step in work.steps:
        if step.kind == "alloc":
            live[step.key] = step.nbytes
            out.append(step.nbytes)
        elif step.kind == "free" and step.key in live:
            out.append(-live.pop(step.key))
    return out + [-n for n in live.values()]
