"""--repeat-layers: a stack of identical layers extrapolated from three short ones, held to the byte against
the full simulation and the CPU allocator; the affine check and its fallback (issue 10, item 6)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from reference import measure
from torch import nn

from memtrace.cli.main import main
from memtrace.tracer.analysis.extrapolate import NotAffine, affine
from memtrace.tracer.core.specs import parse_input, parse_optimizer
from memtrace.tracer.engine.recipes import Recipe
from memtrace.tracer.simulate import Config, Request, run


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 3 * width)
        self.down = nn.Linear(3 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class Stack(nn.Module):
    def __init__(self, layers: int, width: int = 64, vocab: int = 97) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(layers))
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def build(layers: int = 7) -> nn.Module:
    return Stack(layers)


def _request(device: str, repeat: int, checkpoint: tuple[str, ...] = ()) -> Request:
    config = Config(
        optimizer=parse_optimizer("adamw"),
        device=device,
        recipe=Recipe(None, None, checkpoint),
        repeat_layers=repeat,
    )
    return Request(build, (parse_input("4x32:int64"),), (("layers", 7),), config)


@pytest.mark.parametrize("checkpoint", [(), ("blocks.*",)])
def test_cpu_extrapolation_is_the_full_step_to_the_byte(checkpoint: tuple[str, ...]) -> None:
    full = run(_request("cpu", 0, checkpoint))
    ext = run(_request("cpu", 2, checkpoint))
    assert "extrapolated to 7 layers of blocks from simulations of 2, 3, 4 layers" in ext.notes[-1]
    assert ext.peak_bytes == full.peak_bytes
    assert ext.peak.by_category == full.peak.by_category
    assert ext.totals == full.totals
    assert (ext.activation_peak, ext.first_iteration_peak, ext.flops) == (
        full.activation_peak,
        full.first_iteration_peak,
        full.flops,
    )
    assert ext.model == full.model
    assert ext.modules == () and ext.timeline is None  # the short stack's rows are not the full model's
    model = build(7)
    real = measure(
        model,
        [torch.randint(0, 97, (4, 32))],
        optimizer=parse_optimizer("adamw"),
        recipe=Recipe(None, None, checkpoint),
    )
    assert ext.peak_bytes == real.peak  # the CPU allocator, on the real 7-layer step


def test_cuda_extrapolation_allocated_and_requested_to_the_byte() -> None:
    full = run(_request("cuda", 0))
    ext = run(_request("cuda", 2))
    assert full.cuda is not None and ext.cuda is not None
    assert ext.peak_bytes == full.peak_bytes == ext.cuda.allocated_peak_bytes
    assert ext.cuda.requested_peak_bytes == full.cuda.requested_peak_bytes
    assert ext.peak.by_category == full.peak.by_category
    assert "reserved memory is an estimate" in ext.notes[-1]


def test_no_stack_deep_enough_is_simulated_in_full() -> None:
    request = _request("cpu", 5)  # 5, 6, 7 layers need a list of 8
    result = run(request)
    assert (
        result.peak_bytes == run(replace(request, config=replace(request.config, repeat_layers=0))).peak_bytes
    )
    assert "no list of 8 or more identical layers; simulated in full" in result.notes[-1]


def test_affine_check() -> None:
    assert affine([10, 13, 16], [2, 3, 4], 80, "x") == 10 + 78 * 3
    with pytest.raises(NotAffine, match="grows by 3 then 4 bytes per layer"):
        affine([10, 13, 17], [2, 3, 4], 80, "x")


def test_cli_refuses_exports_with_repeat_layers(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["benchmarks/models/seed_cnn.py:build", "--input", "1x3x32x32", "--repeat-layers", "2"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--export-trace", "t.json"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("memtrace: error: --repeat-layers extrapolates figures")
