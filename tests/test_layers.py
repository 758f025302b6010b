"""The layer table: golden files for the printed table, columns that sum to the summary's totals, and the
diagnosis of the 1080p seed CNN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from test_cli import run
from torch import nn
from zoo import ZOO

from memtrace.tracer.analysis.layers import at_depth, sort_rows, totals
from memtrace.tracer.analysis.peaks import LOSS
from memtrace.tracer.core.records import Category, InputSpec, LayerRow, Result
from memtrace.tracer.outputs.report import dominant_line, layer_breakdown_table
from memtrace.tracer.simulate import simulate

GOLDEN = Path(__file__).resolve().parent / "golden"
REPO = Path(__file__).resolve().parent.parent
SEED = str(REPO / "benchmarks" / "models" / "seed_cnn.py") + ":build"


def _render(depth: int, sort: str | None) -> str:
    res = simulate(SEED, ["2x3x144x256"], device="cpu", optimizer="adam")
    rows = sort_rows(at_depth(res.modules, depth), sort)
    console = Console(width=140, record=True, force_terminal=False, color_system=None)
    with console.capture() as cap:
        console.print(layer_breakdown_table(rows, totals(rows), depth))
    return cap.get()


@pytest.mark.parametrize("depth,sort", [(1, None), (2, "memory"), (1, "params"), (1, "flops")])
def test_layer_table_golden(depth: int, sort: str | None, regen_golden: bool) -> None:
    path = GOLDEN / f"seed_cnn_layers_d{depth}_{sort or 'model'}.out"
    text = _render(depth, sort)
    if regen_golden:
        path.write_text(text)
    assert text == path.read_text(), f"regenerate with pytest --regen-golden if {path.name} should change"


@pytest.mark.parametrize(
    "case", [c for c in ZOO if c.name in ("resnet_block", "transformer_sdpa", "tied")], ids=lambda c: c.name
)
@pytest.mark.parametrize("depth,device", [(1, "cpu"), (2, "cuda"), (3, "cpu")])
def test_columns_sum_to_the_summary(case, depth: int, device: str) -> None:  # type: ignore[no-untyped-def]
    res = simulate(case.build, [f"{'x'.join(map(str, s))}:{d}" for s, d in case.inputs], device=device)
    rows = at_depth(res.modules, depth)
    total = totals(rows)
    assert total.peak_bytes == res.peak_bytes
    assert total.parameters == res.model.parameters
    assert total.parameter_bytes == res.totals[Category.PARAMETER] + res.totals[Category.BUFFER]
    assert total.gradient_bytes == res.totals[Category.GRADIENT]
    assert total.optimizer_bytes == res.totals[Category.OPTIMIZER_STATE]
    assert total.activation_bytes == res.totals[Category.ACTIVATION]
    assert total.flops == res.flops
    assert len({r.name for r in rows}) == len(rows)


def test_layers_in_json_and_sorting(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, SEED, "--input", "2x3x144x256", "--json", "--depth", "1", "--sort", "params")
    assert code == 0, err
    layers = json.loads(out)["layers"]
    assert layers[0]["name"] == "fc1"
    assert [r["parameters"] for r in layers] == sorted((r["parameters"] for r in layers), reverse=True)


def test_seed_1080p_diagnosis_names_fc1_gap_and_half_resolution(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, SEED, "--arg", "h=1080", "--arg", "w=1920", "--input", "1x3x1080x1920", "--diagnose", "--json"
    )
    assert code == 0, err
    diag = json.loads(out)["diagnosis"]
    peak = json.loads(out)["peak_bytes"]
    assert diag["dominant"]["module"] == "fc1"
    (head,) = diag["flatten_heads"]
    assert head["linear"] == "fc1" and head["in_features"] == 128 * 67 * 120
    assert head["gap_parameter_bytes"] == (128 * 512 + 512) * 4
    fixes = {f["change"]: f for f in diag["fixes"]}
    gap = fixes["global average pooling head for fc1"]
    half = fixes["half resolution"]
    assert 0 < gap["peak_bytes"] < peak / 5 and gap["saved_bytes"] == peak - gap["peak_bytes"]
    assert 0 < half["peak_bytes"] < peak / 2


class _OwnLoss(nn.Module):
    """A language model's shape: a head to a wide vocabulary, then its own loss after the head (as Hugging
    Face's models compute it in their forward when given labels)."""

    def __init__(self, vocab: int = 5000) -> None:
        super().__init__()
        self.body = nn.Linear(32, 32)
        self.head = nn.Linear(32, vocab)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(torch.relu(self.body(x)))
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def _loss_row(res: Result) -> LayerRow:
    return next(r for r in at_depth(res.modules, 1) if r.name == LOSS)


def test_the_loss_a_model_computes_is_the_loss_row_and_dominates() -> None:
    res = simulate(_OwnLoss, [InputSpec((256, 32)), InputSpec((256,), "int64", "labels")], device="cpu")
    row = _loss_row(res)
    assert row.type == "cross_entropy: _log_softmax fp32 256x5000"
    assert 256 * 5000 * 4 <= row.activation_bytes < 2 * 256 * 5000 * 4  # log_softmax's output, saved
    assert res.top_layers[0].module == LOSS and "(model)" not in {r.module for r in res.top_layers[:1]}
    console = Console(width=200, record=True)
    console.print(dominant_line(res))
    assert console.export_text().startswith(f"\nDominant: {LOSS} (cross_entropy: _log_softmax fp32 256x5000)")


def test_the_default_steps_cross_entropy_is_the_loss_row() -> None:
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(32, 5000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x)

    res = simulate(Plain, [InputSpec((256, 32))], device="cpu", loss="ce")
    row = _loss_row(res)
    assert row.type == "cross_entropy: _log_softmax fp32 256x5000"
    root = next(r for r in at_depth(res.modules, 1) if r.name == "(model)")
    assert row.peak_bytes >= 256 * 5000 * 4 > 100 * root.peak_bytes  # the loss's tensors left the root
