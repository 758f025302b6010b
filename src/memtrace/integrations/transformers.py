"""`MemtraceCallback`: the Hugging Face Trainer's run with the predicted peak beside the measured one.

    trainer = Trainer(model=model, args=args, train_dataset=train)
    MemtraceCallback().install(trainer)      # ahead of the reporting callbacks (TensorBoard, W&B)
    trainer.train()

At `on_train_begin` it reads what the Trainer is about to do: the first batch of the `train_dataloader` the
Trainer hands to callbacks (drawn with the run's random state kept), `gradient_accumulation_steps`,
`bf16`/`fp16` autocast, the activation checkpointing the Trainer enabled on the model (copied with it), and
the optimizer the Trainer built; it simulates that step (the Trainer's `compute_loss` drops the outputs
before backward, so the output is freed) and prints the prediction and the verdict for the device the run is
on. At each training log it reads the window's peak (`memtrace.monitor`) and adds `memtrace/predicted_peak`,
`memtrace/measured_peak` and `memtrace/reserved` to the logs.

The Trainer appends `logs` to `state.log_history` and then calls `on_log` of every callback in order, the
reporting ones first when the callback is passed as `callbacks=[...]`. So the callback adds its keys to
the history entry just appended, and to `logs` for the callbacks after it: `install(trainer)` puts it first,
so TensorBoard and W&B see the keys too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "memtrace.integrations.transformers needs transformers: pip install 'torch-memtrace[integrations]'"
    ) from exc

from memtrace.monitor import Log, Measure, MemoryMonitor, prediction_text
from memtrace.tracer.core.records import GpuSpec
from memtrace.tracer.core.specs import parse_gpu
from memtrace.tracer.real.running import first_batch, this_device


class MemtraceCallback(TrainerCallback):  # type: ignore[misc]
    """Predict the Trainer's step at `on_train_begin`; log the prediction beside the measurement."""

    def __init__(
        self,
        tolerance: str | float = "5%",
        measure: Measure | None = None,
        log: Log | None = print,
        gpu: str | GpuSpec | None = None,
        output: str | Path | None = None,
    ) -> None:
        self.tolerance = tolerance
        self.measure = measure
        self.log_line = log
        self.gpu = parse_gpu(gpu) if isinstance(gpu, str) else gpu
        self.output = output  # the monitor JSON, written at on_train_end
        self.monitor: MemoryMonitor | None = None

    def install(self, trainer: Any) -> MemtraceCallback:
        """Put this callback first among the trainer's, so the reporting callbacks see its keys."""
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)
        return self

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        loader = kwargs.get("train_dataloader")
        if model is None or loader is None:
            return
        amp = "bf16" if args.bf16 else "fp16" if args.fp16 else None
        self.monitor = MemoryMonitor(
            model,
            optimizer,
            every=max(int(args.logging_steps), 1),
            tolerance=self.tolerance,
            measure=self.measure,
            log=self.log_line,
            amp=amp,
            accumulate=int(args.gradient_accumulation_steps),
            free_output=True,  # Trainer.compute_loss returns the loss only: the outputs die before backward
            gpu=self.gpu or this_device(model),
        )
        result = self.monitor.predict(_model_inputs(first_batch(loader)))
        if self.log_line is not None:
            self.log_line(prediction_text(result))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if self.monitor is None or logs is None or "loss" not in logs:
            return  # training logs only: evaluation and the final summary have no step window
        values = self.monitor.read(int(state.global_step)).metrics()
        logs.update(values)
        history = state.log_history
        if history and history[-1].get("step") == state.global_step:
            history[-1].update(values)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None and self.output is not None:
            self.monitor.to_json(self.output)


def _model_inputs(batch: Any) -> Any:
    """The Trainer calls `model(**inputs)`: a mapping's tensor entries (a BatchEncoding is one)."""
    if hasattr(batch, "items"):
        import torch

        return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    return batch
