"""torchvision detection (Faster R-CNN, Mask R-CNN, RetinaNet) in training and inference, against the CPU
allocator, under the assumption policy.

The reference runs the real step on CPU tensors (synthetic images, fixed targets, seed 0) and measures, on
a model of its own, what its data-dependent ops returned: the counts of each `nonzero` and
`torchvision::nms`, the values of each `.item()`. Simulated with those values (`--assume`), the peak must
match the CPU allocator within 1%; with the defaults it must bound the measurement from above, within 2x.
Needs torchvision (`.ci/torchvision` runs these in a venv of their own).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from memtrace.tracer.core.assume import needed
from memtrace.tracer.core.errors import DataDependentError
from memtrace.tracer.core.records import Result
from memtrace.tracer.core.specs import parse_input
from memtrace.tracer.real.measure import Measured, measure_request
from memtrace.tracer.simulate import Config, Request, run

pytest.importorskip("torchvision")
BUILDER = str(Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "detection.py")
SIZE = 256  # images of 256x256, which the models' own transform resizes to 800x800, as in real use
CASES = [
    ("fasterrcnn_mobilenet_v3_large_fpn", "train"),
    ("maskrcnn_resnet50_fpn", "train"),
    ("retinanet_resnet50_fpn", "train"),
    ("fasterrcnn_mobilenet_v3_large_fpn", "infer"),
    ("retinanet_resnet50_fpn", "infer"),
    ("maskrcnn_resnet50_fpn", "infer"),
]


def _request(name: str, mode: str, assume: tuple[tuple[str, str], ...] = ()) -> Request:
    step = f"{BUILDER}:{'train_step' if mode == 'train' else 'infer_step'}"
    config = Config(device="cpu", mode=mode, step=step, assume=assume)
    return Request(f"{BUILDER}:build", (parse_input(f"1x3x{SIZE}x{SIZE}"),), (("name", name),), config)


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_measured_values_match_the_allocator_and_defaults_bound_it(name: str, mode: str) -> None:
    try:
        default: Result | None = run(_request(name, mode))
    except DataDependentError as exc:  # Mask R-CNN's inference pastes masks by box sizes: no default
        assert (name, mode) == ("maskrcnn_resnet50_fpn", "infer") and "item" in str(exc)
        default = None
    measured = measure_request(_request(name, mode), observe=True)
    assert isinstance(measured, Measured) and measured.assumptions
    ops = {a.op for a in default.assumptions} if default is not None else {"nonzero", "nms", "item"}
    replayed = run(_request(name, mode, needed(measured.assumptions, ops)))
    assert abs(replayed.peak.bytes - measured.peak) <= 0.01 * measured.peak, (
        replayed.peak.bytes,
        measured.peak,
    )
    assert {a.source for a in replayed.assumptions} <= {"--assume"}
    if default is not None:
        assert measured.peak <= default.peak.bytes <= 2 * measured.peak, (default.peak.bytes, measured.peak)


def test_training_targets_are_known_and_nms_is_assumed() -> None:
    """The targets a step makes on the CPU keep their values on meta: RetinaNet's training (anchors matched
    to them, no NMS) needs no assumption; Faster R-CNN's RPN keeps its boxes by nms.keep."""
    assert run(_request("retinanet_resnet50_fpn", "train")).assumptions == ()
    faster = run(_request("fasterrcnn_mobilenet_v3_large_fpn", "train"))
    kept = [a for a in faster.assumptions if a.op == "nms"]
    assert kept and all(a.module == "rpn" and a.source == "default" for a in kept)
    fewer = run(_request("fasterrcnn_mobilenet_v3_large_fpn", "train", (("nms.keep", "0.3"),)))
    for a in (a for a in fewer.assumptions if a.op == "nms"):
        kept, boxes = (int(n) for n in a.value.replace(" boxes kept", "").split(" of "))
        assert kept == math.ceil(0.3 * boxes)


def test_verify_prints_the_values_that_replay_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    """Mask R-CNN's inference cannot be simulated without `item` values: verify measures them, prints the
    `--assume` options, then the one-line error (exit code 2)."""
    from memtrace.cli.main import main

    args = ["verify", f"{BUILDER}:build", "--arg", "name=maskrcnn_resnet50_fpn"]
    args += ["--input", f"1x3x{SIZE}x{SIZE}", "--mode", "infer", "--device", "cpu"]
    args += ["--step", f"{BUILDER}:infer_step"]
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--assume item=" in err and "--assume nms.keep=" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("memtrace: error: ") and ".py:" in last, last  # the line of code that asked
    assert ".item() (or int(), float(), bool()) reads an integer" in last and "--assume item=" in last
