"""tracer/real/measure.py: peak = bytes live at the step's start + the largest rise of the allocation events
in time order, on hand-made event lists; the profiler's events of a known allocation; one tiny real CPU step
against the simulation."""

from __future__ import annotations

import torch
from torch import nn

from memtrace.tracer.core.specs import OptimizerSpec
from memtrace.tracer.engine.batch import Batch
from memtrace.tracer.engine.program import make_optimizer
from memtrace.tracer.real.measure import allocation_events, largest_rise, live_bytes, measure_cpu
from memtrace.tracer.simulate import Config, simulate

TOLERANCE = 0.001  # as tests/test_awkward_models.py holds a CPU step


def test_largest_rise_of_hand_made_events() -> None:
    assert largest_rise([]) == 0
    assert largest_rise([-64, -32]) == 0  # frees of what was live at the start: never above it
    assert largest_rise([100, 50, -120, 80, -110]) == 150  # levels 100, 150, 30, 110, 0
    assert largest_rise([-100, 60, 30]) == 0  # a free first makes room: the level comes back to -10
    assert largest_rise(iter([8, -8, 16, 4, -20])) == 20  # any iterable, read once


def test_peak_is_live_at_start_plus_the_largest_rise() -> None:
    """As `measure_cpu` composes it: the same rise on top of different starts."""
    events = [4096, 1024, -4096, 8192, -1024, -8192]
    rise = largest_rise(events)
    assert rise == 4096 + 1024 - 4096 + 8192
    for start in (0, 1 << 20):
        assert start + rise == start + max(sum(events[: i + 1]) for i in range(len(events)))


def test_allocation_events_of_a_known_allocation() -> None:
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        x = torch.empty(1000, 3)
        nbytes = x.untyped_storage().nbytes()
        y = torch.ones(500, dtype=torch.float64)
        del x, y
    events = allocation_events(prof)
    times = [t for t, _, _ in events]
    assert times == sorted(times)
    sizes = [s for _, s, _ in events]
    assert sizes[:2] == [nbytes, 500 * 8]
    assert sorted(sizes[2:]) == [-nbytes, -500 * 8]
    assert largest_rise(sizes) == nbytes + 500 * 8
    assert events[0][2] == "aten::empty"


def test_live_bytes_counts_each_storage_once() -> None:
    model = nn.Linear(8, 4)
    x = torch.randn(3, 8)
    shared = model.weight.detach()[0]  # an input that is a view of a parameter: no storage of its own
    opt = make_optimizer(OptimizerSpec("adam"), list(model.parameters()), "cpu")
    params = sum(p.untyped_storage().nbytes() for p in model.parameters())
    assert live_bytes(model, Batch((x, shared)), None) == params + x.untyped_storage().nbytes()
    model(x).sum().backward()
    assert opt is not None
    opt.step()
    state = sum(
        t.untyped_storage().nbytes()
        for s in opt.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    grads = sum(p.grad.untyped_storage().nbytes() for p in model.parameters() if p.grad is not None)
    assert state > 0 and grads == params
    expected = params + x.untyped_storage().nbytes() + state + grads
    assert live_bytes(model, Batch((x, shared)), opt) == expected


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_a_tiny_real_step_against_the_simulation() -> None:
    torch.manual_seed(0)
    measured = measure_cpu(
        _Tiny(), Batch((torch.randn(16, 64),)), Config(optimizer=OptimizerSpec("adam"), device="cpu")
    )
    assert measured.peak == measured.start + measured.rise
    assert measured.rise == largest_rise(size for size, _ in measured.allocations)
    predicted = simulate(_Tiny(), ["16x64"], device="cpu", optimizer="adam")
    error = abs(predicted.peak.bytes - measured.peak) / measured.peak
    assert error <= TOLERANCE, f"predicted {predicted.peak.bytes:,} vs measured {measured.peak:,}"
