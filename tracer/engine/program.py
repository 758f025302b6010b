"""The user's step as eager PyTorch, the same code on meta tensors (simulated) and on real ones (reference).

The default training step is a function, and its locals live as a user's do:

    def step(model, batch, optimizer):
        for micro_batch in range(accumulate):
            with autocast:                       # --amp
                out = model(*args, **kwargs)     # the previous micro-batch's `out` lives until rebound here
                loss = loss_fn(out, ...)         # --loss
            (loss / accumulate).backward()       # scaled by GradScaler under --amp fp16
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # `out` and `loss` are freed when the step returns

`--free-output` drops `out` before backward (the `model(x).sum().backward()` style). Inference runs the
forward under `torch.inference_mode()` (`--mode infer`) or `torch.no_grad()` (`--mode no_grad`), in eval
mode. A user's own step function (`--step`) replaces all of this and runs as it is; its phases are found by
the recorder's hooks (the model's forward, the autograd engine, the optimizer's step hooks).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ..core.errors import MemtraceError
from ..core.hf_optim import hf_optimizer, is_hf
from ..core.records import Phase
from ..core.specs import OptimizerSpec
from .batch import Batch
from .generation import known_stops
from .losses import LossFn, auto_loss
from .offload import offloaded_caches

MODES = ("train", "infer", "no_grad", "generate")


class StepObserver(Protocol):
    """What follows the step as it runs (the recorder): iterations, phases, the loss's targets, the end."""

    def start(self, iteration: int) -> None: ...

    def enter(self, phase: Phase) -> None: ...

    def targets(self, batch: Batch) -> None: ...

    def settle(self) -> None: ...


class NullObserver:
    def start(self, iteration: int) -> None:
        pass

    def enter(self, phase: Phase) -> None:
        pass

    def targets(self, batch: Batch) -> None:
        pass

    def settle(self) -> None:
        pass


def make_optimizer(
    spec: OptimizerSpec, params: Sequence[nn.Parameter], device_type: str
) -> torch.optim.Optimizer | None:
    """Any torch.optim class by name (case-insensitive), a class given as FILE.py:Class / module:Class, or a
    Hugging Face Trainer `optim` name as `hf:NAME` (tracer/core/hf_optim.py)."""
    if spec.name.lower() == "none":
        return None
    if is_hf(spec.name):  # the Trainer's class and arguments, the user's own over them
        name, defaults = hf_optimizer(spec.name)
        cls, kwargs = _optimizer_class(name), {**dict(defaults), **dict(spec.kwargs)}
    else:
        cls, kwargs = _optimizer_class(spec.name), dict(spec.kwargs)
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
    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def _optimizer_class(name: str) -> type:
    if ":" in name:
        from .loader import load_object

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


ContextFactory = Callable[[], AbstractContextManager[Any]]
UserStep = Callable[[nn.Module, Any, "torch.optim.Optimizer | None"], Any]


@dataclass(frozen=True)
class StepPlan:
    """How one step runs: train, infer (inference_mode) or no_grad; micro-batches accumulated per optimizer
    step; the autocast context around forward and loss (real autocast for real tensors, the emulation on
    meta); a grad scaler; the loss; whether the output is dropped before backward; or the user's own step."""

    mode: str = "train"
    accumulate: int = 1
    autocast: ContextFactory | None = None
    scaler: Any = None
    loss_fn: LossFn = auto_loss
    free_output: bool = False
    user_step: UserStep | None = None
    generate: tuple[tuple[str, Any], ...] = ()  # --mode generate: generate()'s keyword arguments

    def amp(self) -> AbstractContextManager[Any]:
        return self.autocast() if self.autocast is not None else contextlib.nullcontext()


def train_step(
    model: nn.Module,
    batch: Batch,
    optimizer: torch.optim.Optimizer | None,
    plan: StepPlan,
    observer: StepObserver,
) -> None:
    """memtrace's default training step; `out` and `loss` are locals, alive until it returns."""
    out: Any = None
    loss: Any = None
    for _ in range(plan.accumulate):
        observer.enter(Phase.FORWARD)
        with plan.amp():
            out = model(*batch.args, **batch.kwargs)
            observer.enter(Phase.LOSS)
            loss = plan.loss_fn(out, batch)
        observer.targets(batch)
        if plan.free_output:
            out = None
        observer.enter(Phase.BACKWARD)
        divided = loss / plan.accumulate if plan.accumulate > 1 else loss  # a temporary, as in `(loss / n)`
        (plan.scaler.scale(divided) if plan.scaler is not None else divided).backward()
        divided = None
        if plan.free_output:
            loss = None
    observer.enter(Phase.OPTIMIZER)
    if optimizer is None:
        for p in model.parameters():
            p.grad = None
        return
    if plan.scaler is not None:
        plan.scaler.step(optimizer)
        plan.scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def infer_step(model: nn.Module, batch: Batch, plan: StepPlan, observer: StepObserver) -> None:
    observer.enter(Phase.FORWARD)
    grad_off = torch.inference_mode() if plan.mode == "infer" else torch.no_grad()
    with grad_off, plan.amp():
        model(*batch.args, **batch.kwargs)


def generate_step(model: nn.Module, batch: Batch, plan: StepPlan, observer: StepObserver) -> None:
    """Hugging Face's `generate()` on the batch (the prompt): it runs under its own `no_grad`; the model's
    forwards are the prefill and the decode steps (the recorder's hooks tell them apart)."""
    observer.enter(Phase.PREFILL)
    with plan.amp():
        model.generate(*batch.args, **batch.kwargs, **dict(plan.generate))  # type: ignore[operator]


def run_program(
    model: nn.Module,
    batch: Batch,
    optimizer: torch.optim.Optimizer | None,
    plan: StepPlan,
    observer: StepObserver,
    iterations: int = 2,
    first: int = 0,
) -> None:
    """The step, `iterations` times; each iteration's locals are freed before the next one starts."""
    model.train(plan.mode == "train")
    with known_stops(), offloaded_caches():
        _iterate(model, batch, optimizer, plan, observer, range(first, first + iterations))


def _iterate(
    model: nn.Module,
    batch: Batch,
    optimizer: torch.optim.Optimizer | None,
    plan: StepPlan,
    observer: StepObserver,
    iterations: range,
) -> None:
    for it in iterations:
        observer.start(it)
        if plan.user_step is not None:
            plan.user_step(model, batch.for_step(), optimizer)
        elif plan.mode == "train":
            train_step(model, batch, optimizer, plan, observer)
        elif plan.mode == "generate":
            generate_step(model, batch, plan, observer)
        else:
            infer_step(model, batch, plan, observer)
        observer.settle()
