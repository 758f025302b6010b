"""The user's step as eager PyTorch: forward, loss, backward, optimizer step, zero_grad.

The same code runs on meta tensors under the recorder and on real tensors for the reference
measurement, so both see the same program order.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from memtrace.tracer.errors import MemtraceError
from memtrace.tracer.records import Phase
from memtrace.tracer.specs import OptimizerSpec


class Observer(Protocol):
    def begin(self, phase: Phase, iteration: int) -> None: ...

    def outputs(self, out: Any) -> None: ...

    def gradients(self, params: Sequence[nn.Parameter]) -> None: ...

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> None: ...


class NullObserver:
    def begin(self, phase: Phase, iteration: int) -> None:
        pass

    def outputs(self, out: Any) -> None:
        pass

    def gradients(self, params: Sequence[nn.Parameter]) -> None:
        pass

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        pass


def floating_leaves(out: Any) -> Iterator[torch.Tensor]:
    """Tensors in any output structure: tensor, tuple/list, dict, dataclass, HF-style ModelOutput."""
    if isinstance(out, torch.Tensor):
        if out.is_floating_point() or out.is_complex():
            yield out
    elif isinstance(out, dict):
        for v in out.values():
            yield from floating_leaves(v)
    elif isinstance(out, (list, tuple)):
        for v in out:
            yield from floating_leaves(v)
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        for f in dataclasses.fields(out):
            yield from floating_leaves(getattr(out, f.name))
    elif hasattr(out, "to_tuple"):
        yield from floating_leaves(out.to_tuple())


def default_loss(out: Any) -> torch.Tensor:
    leaves = [t for t in floating_leaves(out) if t.requires_grad]
    if not leaves:
        raise MemtraceError("the model's output has no floating tensor that requires grad: nothing to train")
    loss = leaves[0].sum()
    for t in leaves[1:]:
        loss = loss + t.sum()
    return loss


def make_optimizer(
    spec: OptimizerSpec, params: Sequence[nn.Parameter], device_type: str
) -> torch.optim.Optimizer | None:
    """Any torch.optim class by name (case-insensitive), or a class given as FILE.py:Class / module:Class."""
    if spec.name.lower() == "none":
        return None
    cls = _optimizer_class(spec.name)
    kwargs = dict(spec.kwargs)
    if "lr" not in kwargs and _takes(cls, "lr"):
        kwargs["lr"] = 1e-3
    if device_type == "cuda" and "foreach" not in kwargs and "fused" not in kwargs and _takes(cls, "foreach"):
        kwargs["foreach"] = True  # what PyTorch picks for CUDA tensors by default
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        return None
    try:
        return cls(trainable, **kwargs)  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise MemtraceError(f"optimizer {spec.text()!r} rejected its arguments: {exc}") from exc


def _takes(cls: type, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def _optimizer_class(name: str) -> type:
    if ":" in name:
        from memtrace.tracer.loader import load_object

        cls = load_object(name, "optimizer")
    else:
        found = {k.lower(): getattr(torch.optim, k) for k in dir(torch.optim)}
        cls = found.get(name.lower())
        if cls is None or not isinstance(cls, type) or not issubclass(cls, torch.optim.Optimizer):
            known = sorted(
                k for k, v in found.items() if isinstance(v, type) and issubclass(v, torch.optim.Optimizer)
            )
            known = [k for k in known if k not in ("optimizer",)]
            raise MemtraceError(f"unknown optimizer {name!r} (known: {', '.join(known)}, none)")
    if not isinstance(cls, type) or not issubclass(cls, torch.optim.Optimizer):
        raise MemtraceError(f"optimizer {name!r} is not a torch.optim.Optimizer subclass")
    return cls


def unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(model.parameters())  # parameters() already drops tied duplicates


LossFn = Callable[[Any], torch.Tensor]
ContextFactory = Callable[[], AbstractContextManager[Any]]


@dataclass(frozen=True)
class StepPlan:
    """How one step runs: train or infer, micro-batches accumulated per optimizer step, the autocast context
    entered around forward and loss (real autocast for real tensors, the emulation on meta), a grad scaler."""

    mode: str = "train"
    accumulate: int = 1
    autocast: ContextFactory | None = None
    scaler: Any = None
    loss_fn: LossFn = default_loss


def _forward(model: nn.Module, inputs: Sequence[torch.Tensor], plan: StepPlan, observer: Observer) -> Any:
    with plan.autocast() if plan.autocast is not None else contextlib.nullcontext():
        out = model(*inputs)
        observer.outputs(out)
        if plan.mode != "train":
            return None
        return plan.loss_fn(out)


def train_step(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    observer: Observer,
    iteration: int,
    plan: StepPlan,
) -> None:
    params = unique_parameters(model)
    for _ in range(plan.accumulate):
        observer.begin(Phase.FORWARD, iteration)
        loss = _forward(model, inputs, plan, observer)
        if plan.accumulate > 1:
            loss = loss / plan.accumulate
        observer.begin(Phase.BACKWARD, iteration)
        (plan.scaler.scale(loss) if plan.scaler is not None else loss).backward()
        del loss
    observer.gradients(params)
    observer.begin(Phase.OPTIMIZER, iteration)
    if optimizer is not None:
        if plan.scaler is not None:
            plan.scaler.step(optimizer)
            plan.scaler.update()
        else:
            optimizer.step()
        observer.optimizer_state(optimizer)
        optimizer.zero_grad(set_to_none=True)
    else:
        for p in params:
            p.grad = None
    observer.begin(Phase.SETUP, iteration + 1)


def infer_step(
    model: nn.Module, inputs: Sequence[torch.Tensor], observer: Observer, iteration: int, plan: StepPlan
) -> None:
    observer.begin(Phase.FORWARD, iteration)
    with torch.no_grad():
        _forward(model, inputs, plan, observer)
    observer.begin(Phase.SETUP, iteration + 1)


def run_program(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    plan: StepPlan,
    observer: Observer,
    iterations: int = 2,
    first: int = 0,
) -> None:
    model.train(plan.mode == "train")
    for it in range(first, first + iterations):
        if plan.mode == "train":
            train_step(model, inputs, optimizer, observer, it, plan)
        else:
            infer_step(model, inputs, observer, it, plan)
