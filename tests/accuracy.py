"""Prediction against the CPU allocator for one zoo case: the helper the accuracy tests share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from reference import measure
from zoo import ZooCase, make_inputs

from memtrace.tracer.core.records import InputSpec, Result
from memtrace.tracer.core.specs import parse_optimizer
from memtrace.tracer.engine.batch import Batch
from memtrace.tracer.engine.recipes import Recipe
from memtrace.tracer.simulate import Config, analyse, trace_model

# (mode, optimizer) each zoo model is held against the allocator with (tests and benchmarks/accuracy.py)
RECIPES = [
    ("train", "adam"),
    ("train", "adamw"),
    ("train", "sgd:momentum=0.9"),
    ("infer", "adam"),
    ("no_grad", "adam"),
]


@dataclass(frozen=True)
class Comparison:
    predicted: int
    measured: int
    result: Result

    @property
    def error(self) -> float:
        return (self.predicted - self.measured) / self.measured


def compare(
    case: ZooCase, mode: str, optimizer: str, recipe: Recipe | None = None, **step: Any
) -> Comparison:
    """`step` takes Config's step fields: loss, free_output, step."""
    config = Config(mode, parse_optimizer(optimizer), "cpu", recipe=recipe or Recipe(), **step)
    return compare_config(case, config)


def compare_config(case: ZooCase, config: Config, names: tuple[str | None, ...] = ()) -> Comparison:
    """Prediction and measurement of one case; `names` make its inputs keyword inputs."""
    names = names or (None,) * len(case.inputs)
    ref = measure(case.build(), _batch(case, "cpu", names), config=config)
    with torch.device("meta"):
        model = case.build()
    trace = trace_model(model, _batch(case, "meta", names), config)
    specs = [InputSpec(s, d, n) for (s, d), n in zip(case.inputs, names, strict=True)]
    result = analyse(trace, model, "meta", specs, config)
    return Comparison(result.peak_bytes, ref.peak, result)


def _batch(case: ZooCase, device: str, names: tuple[str | None, ...]) -> Batch:
    tensors = make_inputs(case, device)
    args = tuple(t for t, n in zip(tensors, names, strict=True) if n is None)
    kwargs = {n: t for t, n in zip(tensors, names, strict=True) if n is not None}
    return Batch(args, kwargs)
