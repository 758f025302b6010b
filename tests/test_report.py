"""tracer/outputs/report.py: the verdict and dominant lines, and the two layer tables, of hand-made
Results."""

from __future__ import annotations

import io
from dataclasses import replace

from rich.console import Console, RenderableType

from memtrace.tracer.core.records import (
    CUDNN_WORKSPACE,
    Category,
    GpuSpec,
    InputSpec,
    LayerRow,
    LayerShare,
    ModelInfo,
    Peak,
    Phase,
    Result,
    judge,
)
from memtrace.tracer.core.specs import human_bytes
from memtrace.tracer.outputs.report import (
    dominant_line,
    layer_breakdown_table,
    top_layers_table,
    verdict_line,
)

MB = 10**6
GPU = GpuSpec("gpu-x", 1000 * MB)


def _text(renderable: RenderableType) -> str:
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(renderable)
    return out.getvalue()


def _result(top: tuple[LayerShare, ...] = (), device: str = "cpu") -> Result:
    peak = Peak(400 * MB, 7, Phase.FORWARD, 1, "aten::mm", "body.fc", {Category.ACTIVATION: 400 * MB}, ())
    return Result(
        model=ModelInfo("hand", 10, 10, 40, 0, "meta"),
        device=device,
        mode="train",
        optimizer="adam",
        inputs=(InputSpec((2, 4)),),
        peak=peak,
        phases=(),
        totals={},
        first_iteration_peak=400 * MB,
        top_layers=top,
    )


def _share(module: str, nbytes: int) -> LayerShare:
    return LayerShare(module, "Linear" if module else "Net", nbytes, {Category.ACTIVATION: nbytes})


def test_dominant_line_names_the_most_specific_holder() -> None:
    # the root's own row comes first (largest), but the first named module is the holder reported
    result = _result((_share("", 300 * MB), _share("body.fc", 100 * MB), _share("head", 50 * MB)))
    line = _text(dominant_line(result)).strip()
    assert line == f"Dominant: body.fc (Linear) holds {human_bytes(100 * MB)}, 25.0% of the peak"


def test_dominant_line_of_the_root_alone_and_of_nothing() -> None:
    assert _text(dominant_line(_result((_share("", 200 * MB),)))).strip() == (
        f"Dominant: (model) (Net) holds {human_bytes(200 * MB)}, 50.0% of the peak"
    )
    assert _text(dominant_line(_result())).strip() == ""


def test_verdict_fits() -> None:
    result = replace(_result(), verdict=judge(GPU, 900 * MB, 400 * MB, "allocated"))
    lines = _text(verdict_line(result)).strip().splitlines()
    assert lines[0] == f"Fits on gpu-x ({human_bytes(1000 * MB)}): {human_bytes(500 * MB)} to spare"
    kept = human_bytes(100 * MB)
    assert lines[1].strip() == f"budget {human_bytes(900 * MB)} = GPU memory - {kept} kept free"


def test_verdict_fits_even_at_the_bound() -> None:
    verdict = judge(GPU, 900 * MB, 400 * MB, "reserved", [(CUDNN_WORKSPACE, 200 * MB)])
    lines = _text(verdict_line(replace(_result(device="cuda"), verdict=verdict))).strip().splitlines()
    assert lines[0].startswith("Fits on gpu-x")
    assert lines[1].strip() == f"still {human_bytes(300 * MB)} to spare if {CUDNN_WORKSPACE} takes its bound"
    assert lines[2].strip().endswith("kept free (CUDA context); reserved memory is held against it")


def test_verdict_borderline_names_the_uncertainty() -> None:
    verdict = judge(GPU, 900 * MB, 800 * MB, "reserved", [(CUDNN_WORKSPACE, 300 * MB)])
    text = _text(verdict_line(replace(_result(device="cuda"), verdict=verdict)))
    lines = [line.strip() for line in text.strip().splitlines()]
    gpu = f"gpu-x ({human_bytes(1000 * MB)})"
    assert lines[0] == f"Borderline on {gpu}: {human_bytes(100 * MB)} to spare by the simulation,"
    assert lines[1] == f"up to {human_bytes(200 * MB)} short if {CUDNN_WORKSPACE} takes its bound"
    assert lines[2].startswith(f"uncertain: {CUDNN_WORKSPACE}, chosen by cuDNN's heuristics")
    assert lines[2].endswith(f"up to {human_bytes(300 * MB)}")


def test_verdict_does_not_fit() -> None:
    result = replace(_result(device="cuda"), verdict=judge(GPU, 300 * MB, 400 * MB, "allocated"))
    lines = [line.strip() for line in _text(verdict_line(result)).strip().splitlines()]
    assert lines[0] == f"Does not fit on gpu-x ({human_bytes(1000 * MB)}): needs {human_bytes(100 * MB)} more"
    assert lines[1].endswith("kept free (CUDA context and fragmentation)")
    assert _text(verdict_line(_result())).strip() == ""  # no GPU asked: no verdict


def test_the_two_layer_tables_say_what_they_hold() -> None:
    result = _result((_share("body.fc", 100 * MB),))
    top = _text(top_layers_table(result))
    assert "Layers holding the most at the peak" in top and "body.fc" in top and "25.0%" in top
    rows = [
        LayerRow("body", "Seq", 1, (2, 4), 10, 40, 40, 80, 1000, 2000, 64),
        LayerRow("fc", "Linear", 2, (2, 4), 10, 40, 40, 80, 1000, 2000, 64),
    ]
    total = LayerRow("total", "", 0, (), 10, 40, 40, 80, 1000, 2000, 64)
    breakdown = _text(layer_breakdown_table(rows, total, 2))
    assert "Layers (depth 2)" in breakdown
    names = [line.split("\u2502")[0].rstrip() for line in breakdown.splitlines()]
    assert names.index(" body") + 1 == names.index("   fc")  # depth 2: indented under its parent
    assert breakdown.strip().splitlines()[-1].split()[0] == "total"
