"""tracer/engine/recorder.py: an allocation for every new storage an op makes, a free when its last reference
goes (placed before the next op), nothing for views and in-place results; a tiny op sequence on meta."""

from __future__ import annotations

import torch
from torch import nn

from memtrace.tracer.core.records import Category, Kind, Phase
from memtrace.tracer.engine.device_model import DeviceModel
from memtrace.tracer.engine.hooks import recording, register_baseline
from memtrace.tracer.engine.recorder import Recorder


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def test_new_storages_views_and_in_place_ops() -> None:
    rec = Recorder(DeviceModel("cpu"))
    model = nn.Module()
    x = torch.empty(4, 8, device="meta")
    register_baseline(rec, model, [x], {})
    with recording(rec, model):
        rec.start(0)
        rec.enter(Phase.FORWARD)
        a = x * 2  # a new storage
        size_a = _nbytes(a)
        v = a.view(32)  # views share it
        t = a.t()
        a.add_(1)  # in place: no new storage
        v.mul_(3)
        b = (t + 1).to(torch.float64)  # two new storages, the first a temporary
        size_b = _nbytes(b)
        del a, v, t  # a's storage dies with its last view
        c = b.sum()
        size_c = _nbytes(c)
        del b, c
        rec.settle()
    trace = rec.trace(1)
    ops = [(e.kind, e.op, e.nbytes) for e in trace.events]
    assert ops[:3] == [
        (Kind.ALLOC, "mul", size_a),
        (Kind.ALLOC, "add", size_a),
        (Kind.ALLOC, "_to_copy", size_b),
    ]
    # the temporary and `a` both died before `sum`: freed before its allocation
    assert sorted(ops[3:5]) == [(Kind.FREE, "add", size_a), (Kind.FREE, "mul", size_a)]
    assert ops[5:] == [
        (Kind.ALLOC, "sum", size_c),
        (Kind.FREE, "_to_copy", size_b),
        (Kind.FREE, "sum", size_c),
    ]
    assert [e.seq for e in trace.events] == list(range(len(trace.events)))
    assert {e.phase for e in trace.events} == {Phase.FORWARD}
    assert all(trace.storages[e.storage].category is Category.TEMPORARY for e in trace.events)
    assert [trace.storages[sid].category for sid in trace.baseline] == [Category.INPUT]  # x, alive before


def test_a_storage_kept_alive_is_not_freed() -> None:
    rec = Recorder(DeviceModel("cpu"))
    model = nn.Module()
    x = torch.empty(16, device="meta")
    register_baseline(rec, model, [x], {})
    with recording(rec, model):
        rec.start(0)
        kept = x + 1
        view = kept[:4]
        del kept  # the view still holds the storage
        y = x * 2
        rec.settle()
    kinds = [(e.kind, e.op) for e in rec.trace(1).events]
    assert kinds == [(Kind.ALLOC, "add"), (Kind.ALLOC, "mul")]
    del view, y
