"""tracer/core/records.py: the one data model, its JSON (written at SCHEMA_VERSION, older schemas read) and
the verdict's status, on small hand-made records."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, fields, replace

import pytest

from memtrace.tracer.core.records import (
    BORDERLINE,
    CUDNN_WORKSPACE,
    DOES_NOT_FIT,
    FITS,
    READABLE_SCHEMAS,
    SCHEMA_VERSION,
    Assumption,
    Category,
    Event,
    GpuSpec,
    InputSpec,
    Kind,
    LayerShare,
    ModelInfo,
    Peak,
    Phase,
    PhasePeak,
    Result,
    StorageInfo,
    TensorRow,
    Verdict,
    judge,
    make_event,
    make_storage_info,
)

MB = 1 << 20
GPU = GpuSpec("test-gpu", 8 << 30)


def _result(**changes: object) -> Result:
    by_category = {Category.PARAMETER: 4 * MB, Category.ACTIVATION: 6 * MB}
    peak = Peak(
        bytes=10 * MB,
        seq=41,
        phase=Phase.BACKWARD,
        iteration=1,
        op="aten::mm",
        module="fc2",
        by_category=by_category,
        top_tensors=(TensorRow(6 * MB, Category.ACTIVATION, (64, 1024), "float32", "aten::relu", "act"),),
    )
    result = Result(
        model=ModelInfo("tiny", 1_000_000, 1_000_000, 4 * MB, 0, "meta"),
        device="cpu",
        mode="train",
        optimizer="adam",
        inputs=(InputSpec((64, 256)), InputSpec((64,), "int64", "labels")),
        peak=peak,
        phases=(
            PhasePeak(Phase.FORWARD, 8 * MB, "aten::relu", "act"),
            PhasePeak(Phase.BACKWARD, 10 * MB, "", ""),
        ),
        totals={Category.PARAMETER: 4 * MB, Category.GRADIENT: 4 * MB},
        first_iteration_peak=9 * MB,
        top_layers=(LayerShare("fc2", "Linear", 7 * MB, by_category),),
        verdict=judge(GPU, 20 * MB, 10 * MB, "allocated"),
        notes=("a note",),
        assumptions=(Assumption("nonzero", "mask", "all 16 elements kept", "default"),),
    )
    return replace(result, **changes)  # type: ignore[arg-type]


def test_round_trip_through_json_text() -> None:
    result = _result()
    data = json.loads(json.dumps(result.to_json()))
    assert data["schema"] == SCHEMA_VERSION
    again = Result.from_json(data)
    assert again == result
    assert again.to_json() == result.to_json()
    assert again.peak.phase is Phase.BACKWARD and again.totals[Category.GRADIENT] == 4 * MB
    assert again.inputs[1].name == "labels" and again.inputs[1].text() == "labels=64:int64"


def test_unknown_schema_is_refused() -> None:
    data = _result().to_json()
    for schema in (0, SCHEMA_VERSION + 1, None):
        data["schema"] = schema
        with pytest.raises(ValueError, match="unsupported memtrace result schema"):
            Result.from_json(data)


def test_an_older_schema_reads_with_defaults() -> None:
    """Schema 1 had no recipe, step, cuda, timeline, flags, assumptions, and a verdict without status."""
    assert 1 in READABLE_SCHEMAS
    data = _result().to_json()
    data["schema"] = 1
    for key in (
        "recipe",
        "accumulate",
        "step",
        "loss",
        "free_output",
        "cuda",
        "timeline",
        "flags",
        "assumptions",
    ):
        data.pop(key)
    for key in ("basis", "status", "uncertain_bytes", "uncertain_reasons"):
        data["verdict"].pop(key)
    old = Result.from_json(data)
    assert (old.recipe, old.accumulate, old.step, old.loss) == ("fp32", 1, "default", "auto")
    assert old.cuda is None and old.timeline is None and old.assumptions == ()
    assert old.verdict is not None
    assert (old.verdict.basis, old.verdict.status, old.verdict.uncertain_bytes) == ("allocated", FITS, 0)
    data["verdict"]["fits"], data["verdict"]["spare_bytes"] = False, -MB
    assert Result.from_json(data).verdict.status == DOES_NOT_FIT  # type: ignore[union-attr]


def test_judge_weighs_the_stated_uncertainty() -> None:
    sure = judge(GPU, 100, 60, "reserved", [(CUDNN_WORKSPACE, 30)])
    assert (sure.status, sure.fits, sure.spare_bytes, sure.uncertain_bytes) == (FITS, True, 40, 30)
    near = judge(GPU, 100, 80, "reserved", [(CUDNN_WORKSPACE, 30)])
    assert (near.status, near.fits, near.worst_short_bytes) == (BORDERLINE, False, 10)
    short = judge(GPU, 100, 101, "reserved")
    assert (short.status, short.fits, short.uncertain_reasons) == (DOES_NOT_FIT, False, ())


def test_a_verdict_without_status_follows_fits() -> None:
    assert Verdict(GPU, True, 10, 1).status == FITS
    assert Verdict(GPU, False, 10, -1).status == DOES_NOT_FIT


def test_derived_figures() -> None:
    result = _result()
    assert result.all_steps_peak_bytes == 10 * MB  # the steady state's is higher than the first step's
    assert replace(result, first_iteration_peak=12 * MB).all_steps_peak_bytes == 12 * MB
    assert result.fit_bytes == result.peak_bytes == 10 * MB  # no allocator model: the peak
    assert result.effective_batch == 64
    assert replace(result, accumulate=4).effective_batch == 256
    assert replace(result, inputs=(InputSpec(("B", 256)),)).effective_batch is None


def test_positional_makers_make_the_same_frozen_records() -> None:
    """`make_event` / `make_storage_info` (the bulk constructors) give records equal to, hashing as and of
    the class of the dataclass's own constructor, still frozen."""
    args = (7, Kind.FREE, 3, 1536, Phase.DECODE, 1, "mm", "layers.0.attention", "n")
    made, own = make_event(*args), Event(*args)
    assert made == own and hash(made) == hash(own) and type(made) is Event
    assert [getattr(made, f.name) for f in fields(Event)] == list(args)
    info = (3, 1536, Category.KV_CACHE, "empty", "layers.0", (1, 8, 128), "bfloat16", Phase.SETUP, 0, "")
    assert make_storage_info(*info) == StorageInfo(*info) and type(make_storage_info(*info)) is StorageInfo
    with pytest.raises(FrozenInstanceError):
        made.nbytes = 0  # type: ignore[misc]
