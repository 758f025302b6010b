"""Identical decode forwards replayed from their events (engine/decode_replay.py): the figures are the full
simulation's, held against the CPU allocator, and a forward that keeps state is run in full."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from memtrace.tracer.core.records import Result
from memtrace.tracer.core.specs import parse_input
from memtrace.tracer.devices.cuda import placement, served
from memtrace.tracer.engine import decode_replay
from memtrace.tracer.real.measure import measure_request
from memtrace.tracer.simulate import Config, Request, run, run_recorded

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
GPTFAST = f"{MODELS / 'gptfast.py'}:build"
STEPS = MODELS / "gptfast_generate.py"


def _request(step: str, device: str = "cpu") -> Request:
    config = Config(mode="infer", device=device, step=f"{STEPS}:{step}")
    return Request(GPTFAST, (parse_input("1x16:int64"),), (), config)


def _without_notes(result: Result) -> dict[str, Any]:
    data = result.to_json()
    data.pop("notes")
    return data


def _replayed(result: Result) -> list[str]:
    return [n for n in result.notes if "decode forwards replayed" in n]


def _both(request: Request, monkeypatch: pytest.MonkeyPatch) -> tuple[Result, Result]:
    replayed = run(request)
    monkeypatch.setattr(decode_replay, "ENABLED", False)
    full = run(request)
    monkeypatch.setattr(decode_replay, "ENABLED", True)
    return replayed, full


@pytest.mark.parametrize(
    ("step", "device"), [("step", "cpu"), ("step_sampling", "cuda"), ("step_while", "cpu")]
)
def test_replayed_decode_forwards_give_the_full_simulation(
    step: str, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gpt-fast loop of 7 decode forwards: 5 replayed (the first two run, then found alike), and every
    figure of the result (peaks, phases, timeline, layers, SDPA choices on cuda) the full simulation's."""
    replayed, full = _both(_request(step, device), monkeypatch)
    assert _replayed(replayed) == [
        "decode: 5 of the 7 decode forwards replayed from the one before them, not run (the same inputs' "
        "shapes, the same events twice in a row; docs/generate.md)"
    ]
    assert _replayed(full) == []
    assert _without_notes(replayed) == _without_notes(full)


def test_replayed_decode_matches_the_cpu_allocator() -> None:
    simulated = run(_request("step"))
    assert _replayed(simulated)
    measured = measure_request(_request("step"))
    assert abs(simulated.peak.bytes - measured.peak) <= 64  # +36 B of 681,600, as the full simulation


@pytest.mark.parametrize("snapshots", [1, 10**9])
def test_a_decode_loop_is_placed_as_the_allocator_replays_it(
    snapshots: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cuda placement of a replayed decode loop (one pass over the events, the segments at the reserved
    peak from a snapshot where one is cheap, or the requests up to it replayed again) gives what the
    allocator's own replay (`allocator.replay` through `placement.place`) and `served.serve` give."""
    monkeypatch.setattr(served, "_SNAPSHOT_EVERY", snapshots)
    ran = run_recorded(_request("step", "cuda"))
    assert _replayed(ran.result) and ran.placed is not None
    trace, stats = placement.place(ran.trace, ran.placed.config)
    assert ran.placed.trace == trace
    assert ran.placed.stats == stats
    assert stats.segments_at_reserved_peak and stats.reserved_after
    assert ran.placed.served == served.serve(ran.trace, ran.placed.config)


class KeepingKVCache(nn.Module):
    """A decode forward that keeps a tensor it made (in a module attribute): not replayed. (Its class name
    makes it a static cache, so that its forwards are decode steps.)"""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(32, 32)
        self.k_cache = torch.zeros(1, 64, 32)
        self.kept: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.proj(x)
        self.kept.append(y.detach().clone())
        return y.sum(-1)


def build_keeping() -> nn.Module:
    return KeepingKVCache()


def decode_keeping(model: nn.Module, inputs: tuple[torch.Tensor, ...], optimizer: Any) -> None:
    with torch.no_grad():
        x = inputs[0]
        for i in range(6):
            model(x, torch.tensor([i]))


def test_a_forward_that_keeps_what_it_made_is_run_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config(mode="infer", device="cpu", step=f"{__file__}:decode_keeping")
    request = Request(f"{__file__}:build_keeping", (parse_input("1x32"),), (), config)
    replayed, full = _both(request, monkeypatch)
    assert _replayed(replayed) == []
    assert _without_notes(replayed) == _without_notes(full)
