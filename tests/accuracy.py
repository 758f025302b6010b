"""Prediction against the CPU allocator for one zoo case: the helper the accuracy tests share."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from reference import measure
from zoo import ZooCase, make_inputs

from memtrace.tracer.recipes import Recipe
from memtrace.tracer.records import InputSpec, Result
from memtrace.tracer.simulate import Config, analyse, trace_model
from memtrace.tracer.specs import parse_optimizer


@dataclass(frozen=True)
class Comparison:
    predicted: int
    measured: int
    result: Result

    @property
    def error(self) -> float:
        return (self.predicted - self.measured) / self.measured


def compare(case: ZooCase, mode: str, optimizer: str, recipe: Recipe | None = None) -> Comparison:
    spec = parse_optimizer(optimizer)
    recipe = recipe or Recipe()
    ref = measure(case.build(), make_inputs(case, "cpu"), mode, spec, recipe)
    with torch.device("meta"):
        model = case.build()
    config = Config(mode, spec, "cpu", recipe=recipe)
    trace = trace_model(model, make_inputs(case, "meta"), config)
    result = analyse(trace, model, "meta", [InputSpec(s, d) for s, d in case.inputs], config)
    return Comparison(result.peak_bytes, ref.peak, result)
