"""`MemtraceCallback` for Lightning: the run's measured peak beside the predicted one.

    trainer = lightning.Trainer(max_epochs=3, callbacks=[MemtraceCallback(every=100)])
    trainer.fit(module, train_loader)

At the first training batch it simulates the step Lightning runs with automatic optimization: the module
copied to meta without its weights (and without its trainer: `self.log` inside the copy's `training_step` is
a no-op), `training_step(batch, i)` for each of `accumulate_grad_batches` micro-batches, the loss divided by
their number, backward, the optimizer's step and `zero_grad`; under autocast for the `bf16-mixed` and
`16-mixed` precisions (without GradScaler: its few scalars are not simulated). Every `every` optimizer steps
it reads the window's peak (`memtrace.monitor`: CUDA's peak statistics, or the `measure` given) and logs
`memtrace/predicted_peak`, `memtrace/measured_peak` and `memtrace/reserved` with `pl_module.log_dict`.
One optimizer (the first of `trainer.optimizers`) is read; manual optimization is not modelled.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError as exc:  # pragma: no cover - exercised only without lightning
    raise ImportError(
        "memtrace.integrations.lightning needs lightning: pip install 'torch-memtrace[integrations]'"
    ) from exc

import torch
from torch import nn

from memtrace.monitor import Log, Measure, MemoryMonitor, prediction_text
from memtrace.tracer.core.records import GpuSpec
from memtrace.tracer.core.specs import parse_gpu
from memtrace.tracer.meta.metacopy import to_meta
from memtrace.tracer.real.running import StepSettings, module_device, predict, this_device

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class MemtraceCallback(Callback):  # type: ignore[misc]
    """Predict the step at the first batch; every `every` optimizer steps, log it beside the measurement."""

    def __init__(
        self,
        every: int = 100,
        tolerance: str | float = "5%",
        measure: Measure | None = None,
        log: Log | None = print,
        gpu: str | GpuSpec | None = None,
        output: str | Path | None = None,
    ) -> None:
        self.every = every
        self.tolerance = tolerance
        self.measure = measure
        self.log_line = log
        self.gpu = parse_gpu(gpu) if isinstance(gpu, str) else gpu
        self.output = output
        self.monitor: MemoryMonitor | None = None
        self._read_at = 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.monitor is not None:
            return
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        device = module_device(pl_module)
        step = lightning_step(
            batch, AUTOCAST.get(str(trainer.precision)), device, trainer.accumulate_grad_batches
        )
        settings = StepSettings(step=step, gpu=self.gpu or this_device(pl_module))
        result = predict(pl_module, _positional(batch), optimizer, settings, builder=meta_builder(pl_module))
        self.monitor = MemoryMonitor(
            pl_module, optimizer, self.every, self.tolerance, result, self.measure, self.log_line
        )
        if self.log_line is not None:
            self.log_line(prediction_text(result))

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if self.monitor is None or step == self._read_at or step % self.every:
            return
        self._read_at = step
        pl_module.log_dict(self.monitor.read(step).metrics(), on_step=True, on_epoch=False)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None and self.output is not None:
            self.monitor.to_json(self.output)


def meta_builder(module: nn.Module) -> Callable[[], nn.Module]:
    """The module's meta copy, made without its trainer (neither copied nor shared with the copy)."""

    def build() -> nn.Module:
        saved = module.__dict__.get("_trainer")
        module.__dict__["_trainer"] = None
        try:
            return to_meta(module)
        finally:
            module.__dict__["_trainer"] = saved

    build.__name__ = type(module).__name__
    return build


def _positional(batch: Any) -> Any:
    """The batch as input specs take it: a tensor, a tuple, or a mapping."""
    return tuple(batch) if isinstance(batch, list) else batch


def lightning_step(
    batch: Any, amp: torch.dtype | None, device: str, accumulate: int
) -> Callable[[nn.Module, Any, Any], None]:
    """Lightning's automatic optimization, as a memtrace step: `training_step` per micro-batch, the loss
    divided by their number, backward; then the optimizer's step and `zero_grad`."""
    single = isinstance(batch, torch.Tensor)

    def step(model: nn.Module, inputs: Any, optimizer: Any) -> None:
        data = inputs[0] if single else inputs
        for i in range(accumulate):
            ctx = torch.autocast(device, dtype=amp) if amp is not None else contextlib.nullcontext()
            with ctx, warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*self\.log\(\)")  # the copy has no trainer
                out = model.training_step(data, i)  # type: ignore[operator]
            loss = out["loss"] if isinstance(out, Mapping) else out
            (loss / accumulate if accumulate > 1 else loss).backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step
