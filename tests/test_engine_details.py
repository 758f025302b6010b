"""Engine details that the zoo does not isolate, each against the CPU allocator, exactly."""

from __future__ import annotations

import torch
from reference import measure
from torch import nn

from memtrace.tracer.core.records import InputSpec
from memtrace.tracer.core.specs import parse_optimizer
from memtrace.tracer.simulate import Config, analyse, trace_model


class Branches(nn.Module):
    """One activation feeds two branches: autograd sums their gradients in place in the real engine."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(512, 2048)
        self.a = nn.Linear(2048, 2048)
        self.b = nn.Linear(2048, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(x))
        return self.a(h) + self.b(h).sigmoid()


def _predict(cls: type[nn.Module], shape: tuple[int, ...]) -> int:
    with torch.device("meta"):
        model = cls()
    config = Config("train", parse_optimizer("sgd"), "cpu")
    trace = trace_model(model, [torch.empty(shape, device="meta")], config)
    return analyse(trace, model, "meta", [InputSpec(shape)], config).peak_bytes


def test_gradient_sums_in_place_as_the_engine_does() -> None:
    torch.manual_seed(0)
    measured = measure(Branches(), [torch.randn(256, 512)], "train", parse_optimizer("sgd")).peak
    assert _predict(Branches, (256, 512)) == measured
