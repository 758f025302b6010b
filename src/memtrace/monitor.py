"""Watch the real run: the predicted peak of the step beside the measured one, every `every` steps.

    mon = MemoryMonitor(model, optimizer, every=100, tolerance="5%")
    for batch in loader:
        ...                                   # your step
        mon.step(batch)                       # the batch the model is called with

On the first step the monitor simulates the step on meta (the module copied without its weights, the batch's
shapes, the optimizer's class and arguments, the autocast state at the call unless `amp=` says, checkpointing
the model does itself or `checkpoint=` globs, `accumulate=` micro-batches), or takes the `result=` given.
Every `every` steps it reads the window's peak and logs one line: step, measured peak, predicted peak,
reserved, error (`(predicted - measured) / measured`, as `memtrace verify` and `compare`). When the measured
peak exceeds the prediction by more than `tolerance`, it warns once (`MemoryDriftWarning`), naming the
prediction's largest categories.

Measuring: on CUDA, `torch.cuda.max_memory_allocated()` / `max_memory_reserved()` and the current figures,
then `reset_peak_memory_stats()` (also at construction, so the first window holds the first step, where the
optimizer's state appears). The CPU allocator has no cheap peak reading: off CUDA the measured figures are
null unless a `measure` callable is given (it returns a `Reading` for the window since its last call).
`mon.history` holds the rows; `mon.to_json(path)` writes them with the prediction, the file
`memtrace compare RESULT.json MONITOR.json` reads.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.core.records import BORDERLINE, GpuSpec, Result
from memtrace.tracer.core.specs import human_bytes, parse_gpu, parse_tolerance
from memtrace.tracer.real.running import (
    Reading,
    StepSettings,
    autocast_state,
    cuda_index,
    cuda_reading,
    module_device,
    predict,
)
from memtrace.tracer.real.verify import Check

Measure = Callable[[], "Reading | None"]
Log = Callable[[str], None]
MONITOR_FORMAT = 1
METRIC_KEYS = ("memtrace/predicted_peak", "memtrace/measured_peak", "memtrace/reserved")

__all__ = ["MemoryDriftWarning", "MemoryMonitor", "Reading", "Row"]


class MemoryDriftWarning(UserWarning):
    """The real run's peak exceeds the prediction by more than the tolerance."""


@dataclass(frozen=True)
class Row:
    """One reading: the optimizer step it was taken at, the prediction for its window, what was measured."""

    step: int
    predicted_peak_bytes: int
    measured_peak_bytes: int | None
    reserved_bytes: int | None
    allocated_bytes: int | None
    current_reserved_bytes: int | None

    @property
    def error(self) -> float | None:
        """(predicted - measured) / measured, as verify and compare; None when nothing was measured."""
        if self.measured_peak_bytes is None:
            return None
        err = Check("peak", self.predicted_peak_bytes, self.measured_peak_bytes).error
        return err if math.isfinite(err) else None

    def drift(self, tolerance: float) -> bool:
        """The measured peak exceeds the prediction by more than the tolerance (a fraction)."""
        measured = (
            self.measured_peak_bytes
        )  # exact arithmetic: a reading exactly at the tolerance is within it
        return measured is not None and measured - self.predicted_peak_bytes > Fraction(tolerance) * max(
            self.predicted_peak_bytes, 0
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "error": self.error}

    def metrics(self) -> dict[str, float]:
        """The row as the integrations log it; a figure not measured is left out (not logged as 0)."""
        values = (self.predicted_peak_bytes, self.measured_peak_bytes, self.reserved_bytes)
        return {k: float(v) for k, v in zip(METRIC_KEYS, values, strict=True) if v is not None}

    def text(self) -> str:
        def size(n: int | None) -> str:
            return "n/a" if n is None else human_bytes(n)

        error = "n/a" if self.error is None else f"{100 * self.error:+.2f}%"
        return (
            f"memtrace step {self.step}: measured peak {size(self.measured_peak_bytes)}, predicted peak "
            f"{size(self.predicted_peak_bytes)}, reserved {size(self.reserved_bytes)}, error {error}"
        )


class MemoryMonitor:
    """The prediction beside the measurement during a real run (see the module's docstring)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Any = None,
        every: int = 100,
        tolerance: str | float = "5%",
        result: Result | None = None,
        measure: Measure | None = None,
        log: Log | None = print,
        *,
        amp: str | None = "auto",
        checkpoint: Sequence[str] = (),
        accumulate: int = 1,
        loss: str | None = None,
        free_output: bool = False,
        step: Callable[..., Any] | None = None,
        gpu: str | GpuSpec | None = None,
    ) -> None:
        if every < 1:
            raise MemtraceError(f"every must be at least 1, got {every}")
        self.model = model
        self.optimizer = optimizer
        self.every = every
        self.tolerance = parse_tolerance(tolerance)
        self.result = result
        self.device = module_device(model)
        self.log = log
        self._amp = amp
        gpu_spec = parse_gpu(gpu) if isinstance(gpu, str) else gpu
        self._settings = StepSettings(None, tuple(checkpoint), accumulate, loss, free_output, step, gpu_spec)
        self._measure = measure if measure is not None else self._default_measure()
        self._steps = 0
        self._last_read = 0
        self._warned = False
        self._rows: list[Row] = []

    def _default_measure(self) -> Measure | None:
        index = cuda_index(self.model)
        if index is None:
            return None
        torch.cuda.reset_peak_memory_stats(index)  # the first window starts here
        return functools.partial(cuda_reading, index)

    @property
    def history(self) -> list[Row]:
        return list(self._rows)

    def predict(self, batch: Any) -> Result:
        """Simulate the step on this batch's shapes (once; later calls return the same result)."""
        if self.result is None:
            amp = autocast_state(self.device) if self._amp == "auto" else self._amp
            settings = replace(self._settings, amp=amp)
            self.result = predict(self.model, batch, self.optimizer, settings)
        return self.result

    def step(self, batch: Any = None) -> Row | None:
        """Call at the end of each optimizer step; predicts on the first, reads every `every` steps."""
        self._steps += 1
        if self.result is None:
            if batch is None:
                raise MemtraceError(
                    "the first mon.step(batch) needs the batch (or give MemoryMonitor result=)"
                )
            self.predict(batch)
        if self._steps % self.every:
            return None
        return self.read(self._steps)

    def read(self, step: int) -> Row:
        """Read the window that ends at optimizer step `step`, log it, warn once on drift."""
        if self.result is None:
            raise MemtraceError("no prediction yet: call predict(batch) first or give MemoryMonitor result=")
        reading = self._measure() if self._measure is not None else None
        first = self._last_read == 0  # the window holds the first step: the optimizer state appears there
        predicted = self.result.all_steps_peak_bytes if first else self.result.peak_bytes
        self._last_read = step
        row = _row(step, predicted, reading)
        self._rows.append(row)
        if self.log is not None:
            self.log(row.text())
        if not self._warned and row.drift(self.tolerance):
            self._warned = True
            warnings.warn(drift_message(row, self.result, self.tolerance), MemoryDriftWarning, stacklevel=2)
        return row

    def to_json(self, path: str | Path) -> None:
        """The rows and the prediction, as `memtrace compare RESULT.json MONITOR.json` reads them."""
        data = {
            "monitor": MONITOR_FORMAT,
            "device": self.device,
            "every": self.every,
            "tolerance": self.tolerance,
            "prediction": self.result.to_json() if self.result is not None else None,
            "history": [r.to_json() for r in self._rows],
        }
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


def _row(step: int, predicted: int, reading: Reading | None) -> Row:
    if reading is None:
        return Row(step, predicted, None, None, None, None)
    return Row(
        step,
        predicted,
        reading.peak_bytes,
        reading.reserved_bytes,
        reading.allocated_bytes,
        reading.current_reserved_bytes,
    )


def drift_message(row: Row, result: Result, tolerance: float) -> str:
    """Where to look: the prediction's largest categories at its peak, and what a gap usually means."""
    measured = row.measured_peak_bytes or 0
    over = (measured - row.predicted_peak_bytes) / max(row.predicted_peak_bytes, 1)
    biggest = sorted(result.peak.by_category.items(), key=lambda kv: -kv[1])[:3]
    parts = ", ".join(f"{c.value} {human_bytes(n)}" for c, n in biggest if n)
    return (
        f"memtrace: at step {row.step} the measured peak {human_bytes(measured)} exceeds the predicted "
        f"{human_bytes(row.predicted_peak_bytes)} by {100 * over:.1f}% (tolerance {100 * tolerance:g}%). "
        f"The prediction's largest parts at its peak: {parts}. A growing gap is a leak (tensors kept across "
        "steps), fragmentation (compare reserved), or a step memtrace does not model."
    )


def prediction_text(result: Result) -> str:
    """The prediction in three lines: the peak (and reserved on CUDA), the step simulated, the verdict."""
    p = result.peak
    where = f"{p.phase.value}, op {p.op or '-'}" + (f" in {p.module}" if p.module else "")
    lines = [f"memtrace: predicted peak {human_bytes(result.all_steps_peak_bytes)} per step (at {where})"]
    if result.cuda is not None:
        lines[0] += f", reserved {human_bytes(result.cuda.reserved_peak_bytes)}"
    inputs = ", ".join(i.text() for i in result.inputs)
    lines.append(
        f"  {result.model.name} on {result.device}, optimizer {result.optimizer}, inputs {inputs}, "
        f"recipe {result.recipe}"
    )
    v = result.verdict
    if v is not None:
        gpu = f"{v.gpu.name} ({human_bytes(v.gpu.bytes)})"
        if v.fits:
            lines.append(f"  fits {gpu}: {human_bytes(v.spare_bytes)} to spare ({v.basis} held against it)")
        elif v.status == BORDERLINE:
            lines.append(
                f"  borderline on {gpu}: {human_bytes(v.spare_bytes)} to spare ({v.basis}), up to "
                f"{human_bytes(v.worst_short_bytes)} short at the bound of {', '.join(v.uncertain_reasons)}"
            )
        else:
            lines.append(f"  does not fit {gpu}: needs {human_bytes(-v.spare_bytes)} more ({v.basis})")
    return "\n".join(lines)
