"""tracer/engine/hooks.py: who each event belongs to. Module hooks name the module in forward, the autograd
node running names the module whose forward made it in backward, the wrapped backward marks gradients, the
optimizer's hooks start its phase; on a small meta model, one default training step."""

from __future__ import annotations

import torch
from torch import nn

from memtrace.tracer.core.records import Category, Event, Kind, Phase, Trace
from memtrace.tracer.core.specs import OptimizerSpec
from memtrace.tracer.engine.batch import Batch
from memtrace.tracer.engine.device_model import DeviceModel
from memtrace.tracer.engine.hooks import recording, register_baseline
from memtrace.tracer.engine.program import StepPlan, make_optimizer, run_program
from memtrace.tracer.engine.recorder import Recorder, active_recorder

BATCH, IN, HIDDEN, OUT = 4, 8, 16, 2
F32 = torch.empty(0).element_size()


def _step() -> tuple[Trace, Recorder]:
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT)).to("meta")
    x = torch.empty(BATCH, IN, device="meta")
    rec = Recorder(DeviceModel("cpu"))
    owners = {id(p): name.rpartition(".")[0] for name, p in model.named_parameters()}
    register_baseline(rec, model, [x], owners)
    opt = make_optimizer(OptimizerSpec("sgd"), list(model.parameters()), "cpu")
    assert active_recorder() is None
    with recording(rec, model):
        assert active_recorder() is rec
        run_program(model, Batch((x,)), opt, StepPlan(), rec, iterations=1)
    assert active_recorder() is None  # the hooks are gone with it
    return rec.trace(1), rec


def _allocs(trace: Trace) -> list[Event]:
    return [e for e in trace.events if e.kind is Kind.ALLOC]


def test_forward_events_belong_to_the_running_module() -> None:
    trace, _ = _step()
    forward = [(e.op, e.module, e.nbytes) for e in _allocs(trace) if e.phase is Phase.FORWARD]
    assert forward == [
        ("addmm", "0", BATCH * HIDDEN * F32),
        ("relu", "1", BATCH * HIDDEN * F32),
        ("addmm", "2", BATCH * OUT * F32),
    ]


def test_backward_events_belong_to_the_module_whose_forward_made_the_node() -> None:
    trace, _ = _step()
    backward = [e for e in _allocs(trace) if e.phase is Phase.BACKWARD]
    by_module = {e.module for e in backward if e.op == "threshold_backward"}
    assert by_module == {"1"}  # ReLU's backward node
    weight_grads = {
        e.module: e.nbytes for e in backward if trace.storages[e.storage].category is Category.GRADIENT
    }
    assert weight_grads == {"2": OUT * F32, "0": HIDDEN * F32}  # the last of each module's grads: the bias's
    grads = [e for e in backward if trace.storages[e.storage].category is Category.GRADIENT]
    assert sum(e.nbytes for e in grads) == F32 * (IN * HIDDEN + HIDDEN + HIDDEN * OUT + OUT)


def test_phases_and_categories_the_hooks_give() -> None:
    trace, _ = _step()
    phases = [e.phase for e in trace.events]
    assert phases == sorted(phases, key=[Phase.FORWARD, Phase.LOSS, Phase.BACKWARD, Phase.OPTIMIZER].index)
    relu = next(e for e in _allocs(trace) if e.op == "relu")
    assert trace.storages[relu.storage].category is Category.ACTIVATION  # saved for backward
    out = next(e for e in _allocs(trace) if e.module == "2" and e.phase is Phase.FORWARD)
    assert trace.storages[out.storage].category is Category.OUTPUT
    # SGD without momentum: the optimizer step frees the gradients (zero_grad) and allocates nothing
    assert all(e.kind is Kind.FREE for e in trace.events if e.phase is Phase.OPTIMIZER)
    categories = {trace.storages[sid].category for sid in trace.baseline}
    assert categories == {Category.PARAMETER, Category.INPUT}
