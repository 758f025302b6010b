"""tracer/engine/recorder.py: an allocation for every new storage an op makes, a free when its last reference
goes (placed before the next op), nothing for views and in-place results; a tiny op sequence on meta."""

from __future__ import annotations

import pytest
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


def test_a_view_of_a_storage_the_recorder_does_not_hold_is_recorded() -> None:
    """The dispatch mode's fast path for views records nothing only for a storage the recorder holds: a
    view of one made outside the recording (no baseline) still allocates it, as `on_op` does."""
    rec = Recorder(DeviceModel("cpu"))
    model = nn.Module()
    x = torch.empty(4, 8, device="meta")
    register_baseline(rec, model, [], {})
    with recording(rec, model):
        rec.start(0)
        rec.enter(Phase.FORWARD)
        v = x.t()
        w = v.transpose(0, 1)  # the storage is known now: nothing more
        rec.settle()
    events = [(e.kind, e.op, e.nbytes) for e in rec.trace(1).events]
    assert (
        events == [(Kind.ALLOC, "t", _nbytes(x))] and w.untyped_storage()._cdata == x.untyped_storage()._cdata
    )


def test_a_training_steps_trace_is_the_same_without_the_view_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Views (t, view, detach, transpose...) skip the op cache and the recorder's `on_op` when their storage
    is held: every event, storage and FLOP count is what the full path records."""
    from memtrace.tracer.engine import dispatch
    from memtrace.tracer.simulate import request, run_traced

    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16), nn.LayerNorm(16))
    req = request(model, inputs=[torch.randn(4, 16)], device="cpu", optimizer="adamw")
    fast_trace, fast = run_traced(req)
    monkeypatch.setattr(dispatch, "_view", lambda func: False)
    full_trace, full = run_traced(req)
    assert fast_trace.events == full_trace.events and fast_trace.storages == full_trace.storages
    assert fast.to_json() == full.to_json()
