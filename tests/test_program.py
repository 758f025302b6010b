"""tracer/engine/program.py: the optimizer by name (any case) or FILE.py:Class, an unknown one refused in one
line; the default step's phases as a `StepObserver` sees them, on small real CPU modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.core.records import Phase
from memtrace.tracer.core.specs import OptimizerSpec, parse_optimizer
from memtrace.tracer.engine.batch import Batch
from memtrace.tracer.engine.program import StepObserver, StepPlan, make_optimizer, run_program


def _params() -> list[nn.Parameter]:
    return list(nn.Linear(4, 2).parameters())


@pytest.mark.parametrize("name", ["adamw", "AdamW", "ADAMW", "adamW"])
def test_optimizer_by_name_in_any_case(name: str) -> None:
    opt = make_optimizer(OptimizerSpec(name), _params(), "cpu")
    assert type(opt) is torch.optim.AdamW
    assert opt.defaults["lr"] == 1e-3  # memtrace's default where the class takes one


def test_optimizer_arguments_and_the_cuda_default() -> None:
    opt = make_optimizer(parse_optimizer("sgd:momentum=0.9,lr=0.5"), _params(), "cpu")
    assert isinstance(opt, torch.optim.SGD)
    assert (opt.defaults["momentum"], opt.defaults["lr"], opt.defaults["foreach"]) == (0.9, 0.5, None)
    on_cuda = make_optimizer(OptimizerSpec("adam"), _params(), "cuda")
    assert on_cuda is not None and on_cuda.defaults["foreach"] is True  # what PyTorch picks for CUDA tensors
    fused = make_optimizer(parse_optimizer("adam:fused=true"), _params(), "cuda")
    assert fused is not None and fused.defaults["foreach"] is None  # an explicit choice is left alone


def test_no_optimizer() -> None:
    assert make_optimizer(OptimizerSpec("none"), _params(), "cpu") is None
    assert make_optimizer(OptimizerSpec("None"), _params(), "cpu") is None
    frozen = _params()
    for p in frozen:
        p.requires_grad_(False)
    assert make_optimizer(OptimizerSpec("adam"), frozen, "cpu") is None  # nothing to train


def test_optimizer_class_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "opts.py"
    path.write_text("import torch\n\nclass Plain(torch.optim.SGD):\n    pass\n\nclass NotOne:\n    pass\n")
    opt = make_optimizer(parse_optimizer(f"{path}:Plain:lr=0.25"), _params(), "cpu")
    assert type(opt).__name__ == "Plain" and opt.defaults["lr"] == 0.25
    with pytest.raises(MemtraceError, match=r"is not a torch.optim.Optimizer subclass$"):
        make_optimizer(parse_optimizer(f"{path}:NotOne"), _params(), "cpu")


def test_unknown_optimizer_is_refused_in_one_line() -> None:
    with pytest.raises(MemtraceError) as exc:
        make_optimizer(OptimizerSpec("adamx"), _params(), "cpu")
    text = str(exc.value)
    assert "\n" not in text and text.startswith("unknown optimizer 'adamx' (known: ")
    assert "adamw" in text and "sgd" in text and text.endswith(", none)")
    with pytest.raises(MemtraceError, match=r"^optimizer 'sgd:bogus=1' rejected its arguments"):
        make_optimizer(parse_optimizer("sgd:bogus=1"), _params(), "cpu")


class _Log:
    """A StepObserver that writes down what it is told."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def start(self, iteration: int) -> None:
        self.calls.append(f"start {iteration}")

    def enter(self, phase: Phase) -> None:
        self.calls.append(phase.value)

    def targets(self, batch: Batch) -> None:
        self.calls.append("targets")

    def settle(self) -> None:
        self.calls.append("settle")


def test_the_default_step_as_its_observer_sees_it() -> None:
    log = _Log()
    observer: StepObserver = log
    model = nn.Linear(4, 3)
    opt = make_optimizer(OptimizerSpec("sgd"), list(model.parameters()), "cpu")
    before = model.weight.detach().clone()
    run_program(
        model, Batch((torch.randn(2, 4),)), opt, StepPlan(accumulate=2), observer, iterations=2, first=5
    )
    one_pass = ["forward", "loss", "targets", "backward"]
    step = [*one_pass, *one_pass, "optimizer", "settle"]
    assert log.calls == ["start 5", *step, "start 6", *step]
    assert not torch.equal(model.weight, before)  # the optimizer stepped
    assert model.weight.grad is None  # zero_grad(set_to_none=True)


def test_inference_runs_forward_alone_in_eval_mode() -> None:
    log = _Log()
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    run_program(model, Batch((torch.randn(2, 4),)), None, StepPlan(mode="infer"), log, iterations=1)
    assert log.calls == ["start 0", "forward", "settle"]
    assert not model.training and model[0].weight.grad is None
