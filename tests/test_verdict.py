"""The verdict: fits only when the spare covers every stated uncertainty (cuDNN's convolution workspace, not
simulated), borderline when only the simulated figure fits, does not fit otherwise; saved as `status` (schema
4), older results read with the status their `fits` gave; the pytest plugin fails on does_not_fit alone."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from rich.console import Console
from zoo import ZOO_BY_NAME

from memtrace.pytest_plugin import check_limit
from memtrace.tracer.core.records import (
    BORDERLINE,
    CUDNN_WORKSPACE,
    DOES_NOT_FIT,
    FITS,
    SCHEMA_VERSION,
    GpuSpec,
    Result,
    judge,
)
from memtrace.tracer.core.specs import Headroom, human_bytes, parse_input
from memtrace.tracer.devices.gpu import verdict
from memtrace.tracer.outputs.report import verdict_line
from memtrace.tracer.simulate import Config, Request, run

SPEC = "2x3x144x256"


@pytest.fixture(scope="module")
def seed() -> Result:
    """The seed CNN on cuda without a GPU: its reserved peak and its cuDNN workspace bound."""
    return run(Request(ZOO_BY_NAME["seed_cnn"].build, (parse_input(SPEC),), config=Config(device="cuda")))


def _bound(result: Result) -> int:
    assert result.cuda is not None and result.cuda.cudnn_workspace_estimate is not None
    return result.cuda.cudnn_workspace_estimate["high_bytes"]


def _gpu(result: Result, spare: int) -> GpuSpec:
    """A GPU whose budget (no headroom) leaves `spare` bytes beside the reserved peak."""
    return GpuSpec("test", result.fit_bytes + spare)


def _text(result: Result) -> str:
    console = Console(width=200, record=True)
    console.print(verdict_line(result))
    return console.export_text()


@pytest.mark.parametrize(
    "part,status",
    [(-1, DOES_NOT_FIT), (0, BORDERLINE), (1, BORDERLINE), (2, FITS), (3, FITS)],
    ids=["short", "no-spare", "inside", "at-bound", "beyond"],
)
def test_status_by_spare_against_the_workspace_bound(seed: Result, part: int, status: str) -> None:
    bound = _bound(seed)
    spare = {-1: -1, 0: 0, 1: bound // 2, 2: bound, 3: 2 * bound}[part]
    v = verdict(_gpu(seed, spare), Headroom(nbytes=0), seed.peak_bytes, seed.cuda)
    assert v is not None and v.status == status and v.fits is (status == FITS)
    assert v.spare_bytes == spare and v.uncertain_bytes == bound
    assert v.uncertain_reasons == (CUDNN_WORKSPACE,)
    assert v.worst_short_bytes == bound - spare


def test_without_convolutions_a_fit_is_sure() -> None:
    result = run(Request(ZOO_BY_NAME["mlp"].build, (parse_input("64x512"),), config=Config(device="cuda")))
    v = verdict(_gpu(result, 0), Headroom(nbytes=0), result.peak_bytes, result.cuda)
    assert v is not None and v.status == FITS and v.uncertain_bytes == 0 and v.uncertain_reasons == ()


def test_the_borderline_line_gives_the_range_and_its_cause(seed: Result) -> None:
    bound = _bound(seed)
    spare = bound // 3
    gpu = _gpu(seed, spare)
    result = replace(seed, verdict=verdict(gpu, Headroom(nbytes=0), seed.peak_bytes, seed.cuda))
    text = _text(result)
    assert (
        f"Borderline on test ({human_bytes(gpu.bytes)}): {human_bytes(spare)} to spare by the simulation"
        in text
    )
    assert f"up to {human_bytes(bound - spare)} short if {CUDNN_WORKSPACE} takes its bound" in text
    assert f"uncertain: {CUDNN_WORKSPACE}, chosen by cuDNN's heuristics" in text
    assert "Fits on" not in text
    wide = replace(
        seed, verdict=verdict(_gpu(seed, 2 * bound), Headroom(nbytes=0), seed.peak_bytes, seed.cuda)
    )
    assert "Fits on test" in _text(wide) and f"still {human_bytes(bound)} to spare if" in _text(wide)


def test_schema_4_saves_the_status_and_older_schemas_read_it_from_fits(seed: Result) -> None:
    v = verdict(_gpu(seed, _bound(seed) // 2), Headroom(nbytes=0), seed.peak_bytes, seed.cuda)
    data = json.loads(json.dumps(replace(seed, verdict=v).to_json()))
    assert data["schema"] == SCHEMA_VERSION == 4
    assert data["verdict"]["status"] == BORDERLINE and data["verdict"]["fits"] is False
    assert data["verdict"]["uncertain_bytes"] == _bound(seed)
    assert data["verdict"]["uncertain_reasons"] == [CUDNN_WORKSPACE]
    assert Result.from_json(data).verdict == v
    for schema, fits in ((1, True), (2, False), (3, True)):
        old = {k: v for k, v in data["verdict"].items() if not k.startswith(("status", "uncertain"))}
        read = Result.from_json({**data, "schema": schema, "verdict": {**old, "fits": fits}}).verdict
        assert read is not None and read.status == (FITS if fits else DOES_NOT_FIT)
        assert read.uncertain_bytes == 0 and read.uncertain_reasons == ()


def test_judge_sums_the_bounds_and_names_only_those_that_count() -> None:
    gpu = GpuSpec("g", 1000)
    v = judge(gpu, 1000, 900, "reserved", (("a", 30), ("b", 0), ("c", 80)))
    assert (v.status, v.uncertain_bytes, v.uncertain_reasons, v.worst_short_bytes) == (
        BORDERLINE,
        110,
        ("a", "c"),
        10,
    )
    assert judge(gpu, 1000, 890, "reserved", (("a", 110),)).status == FITS
    assert judge(gpu, 1000, 1001, "reserved", ()).status == DOES_NOT_FIT


def test_the_pytest_plugin_fails_on_does_not_fit_only(seed: Result) -> None:
    """A borderline step passes the marker's gpu= check, as a fit did before the status existed."""
    bound = _bound(seed)
    builder = ZOO_BY_NAME["seed_cnn"].build
    for spare in (bound // 2, 2 * bound):
        check_limit(model=builder, input=SPEC, gpu=_gpu(seed, spare), headroom="0")
    with pytest.raises(pytest.fail.Exception, match="over the"):
        check_limit(model=builder, input=SPEC, gpu=_gpu(seed, -1), headroom="0")


def test_a_sweep_row_says_what_the_trace_says(seed: Result) -> None:
    """`sweep` weighs the same uncertainties: a GPU whose budget the workspace bound could break is
    borderline in its row, as in the trace's verdict, and not counted as a fit."""
    from memtrace.tracer.studies import fit as fit_module

    spec = (parse_input("Bx3x144x256"),)
    request = Request(ZOO_BY_NAME["seed_cnn"].build, spec, config=Config(device="cuda"))
    gpus = [_gpu(seed, _bound(seed) // 2), replace(_gpu(seed, 2 * _bound(seed)), name="roomy")]
    (row,) = fit_module.sweep(request, fit_module.parse_sets([("B", [(2,)])]), gpus, Headroom(nbytes=0))
    assert row.status == {"test": BORDERLINE, "roomy": FITS}
    assert row.fits == {"test": False, "roomy": True}
