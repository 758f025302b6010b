"""The probing forward left out (engine/prepare.py, engine/trace.py): a step that creates nothing gives the
events, notes and figures it gives after a probe; one that creates a parameter is traced again, probed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from memtrace.tracer.core.records import Trace
from memtrace.tracer.core.specs import parse_optimizer
from memtrace.tracer.engine.config import Config
from memtrace.tracer.engine.trace import ProbeNeeded, trace_model
from memtrace.tracer.simulate import simulate


class _Counting(nn.Module):
    """An MLP that counts its forwards and keeps a tensor attribute (a cache the probe must not leave)."""

    calls = 0

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        self.cache = torch.zeros(100)
        return self.fc2(torch.relu(self.fc1(x)))


class _Packed(nn.Module):
    """Packs with lengths on meta: the full-length note, made by the step instead of the probe."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(16, 32, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True)[0]


class _Late(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "gain" not in self._parameters:
            self.gain = nn.Parameter(torch.ones(32, 32))
        return self.fc(x) @ self.gain


def _traced(make: Callable[[], nn.Module], inputs: list[torch.Tensor], probe: bool) -> Trace:
    with torch.device("meta"):
        model = make()
    config = Config(optimizer=parse_optimizer("adamw"), device="cpu")
    return trace_model(model, inputs, config, probe)


CASES = {
    "mlp": (_Counting, lambda: [torch.empty(4, 32, device="meta")]),
    "packed": (
        _Packed,
        lambda: [torch.empty(4, 10, 16, device="meta"), torch.empty(4, dtype=torch.int64, device="meta")],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_without_the_probe_the_trace_is_the_probed_one(name: str) -> None:
    make, inputs = CASES[name]
    probed, unprobed = _traced(make, inputs(), True), _traced(make, inputs(), False)
    assert unprobed.events == probed.events
    assert unprobed.storages == probed.storages
    assert unprobed.notes == probed.notes
    if name == "packed":
        assert any("packed at full length" in n for n in unprobed.notes)


def test_the_probe_is_one_forward_more() -> None:
    _Counting.calls = 0
    _traced(_Counting, CASES["mlp"][1](), True)
    probed, _Counting.calls = _Counting.calls, 0
    _traced(_Counting, CASES["mlp"][1](), False)
    assert (probed, _Counting.calls) == (3, 2)  # the probe, then two iterations


def test_a_step_that_creates_a_parameter_asks_for_the_probe() -> None:
    with pytest.raises(ProbeNeeded):
        _traced(_Late, [torch.empty(4, 32, device="meta")], False)
    result = simulate(_Late, ["4x32"], device="cpu", optimizer="adamw")
    assert result.model.parameters == 32 * 32 + 32 + 32 * 32  # traced again, the probe first
    assert any("the forward creates gain" in n for n in result.notes)
