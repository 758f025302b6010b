"""The flow of one call: one Request builder for every caller (`simulate.request`), one placement of the
trace through the CUDA allocator per run (`analysis/placed.py`, what `place` and `serve` each give), and
one record (`Saved`) that every renderer takes with `render(saved, out)`."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pytest
from test_cli import SEED

from memtrace.tracer.analysis.placed import place
from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.core.records import InputSpec
from memtrace.tracer.core.specs import LossSpec, OptimizerSpec, parse_gpu
from memtrace.tracer.devices.cuda import placement, served
from memtrace.tracer.devices.cuda.allocator import AllocatorConfig
from memtrace.tracer.devices.cuda.served import serve
from memtrace.tracer.outputs import export_snapshot, export_trace, html_report, plots, report, saved
from memtrace.tracer.outputs.saved import Saved
from memtrace.tracer.simulate import Request, request, run_recorded

INPUT = "8x3x144x256"


@pytest.fixture(scope="module")
def ran_cuda() -> object:
    return run_recorded(request(SEED, INPUT, gpu="rtx4070"))


def test_request_parses_user_values_once() -> None:
    req = request(
        SEED,
        ["8x3x144x256"],
        args={"h": 144},
        optimizer="sgd:momentum=0.9",
        gpu="rtx4070",
        headroom="1GB",
        amp="bf16",
        checkpoint=["layer*"],
        accumulate=2,
        loss="mse",
    )
    assert req.inputs == (InputSpec((8, 3, 144, 256)),)
    assert req.builder_kwargs == (("h", 144),)
    assert req.config.optimizer == OptimizerSpec("sgd", (("momentum", 0.9),))
    assert req.config.recipe.amp == "bf16" and req.config.recipe.checkpoint == ("layer*",)
    assert req.config.recipe.accumulate == 2
    assert req.config.loss == LossSpec("mse")
    assert req.gpu == parse_gpu("rtx4070")
    assert req.headroom is not None


def test_request_takes_parsed_specs_as_they_are() -> None:
    spec, gpu = InputSpec((2, 3)), parse_gpu("rtx4070")
    req = request(SEED, (spec,), optimizer=OptimizerSpec("adamw"), gpu=gpu, loss="CE", loss_class_dim=1)
    assert req.inputs == (spec,) and req.gpu is gpu
    assert req.config.optimizer == OptimizerSpec("adamw")
    assert req.config.loss == LossSpec("ce", (), 1)
    assert request(SEED, INPUT).config.loss is None


def test_request_refuses_in_one_line() -> None:
    with pytest.raises(MemtraceError, match="--fsdp-wrap describes a data-parallel job"):
        request(SEED, INPUT, fsdp_wrap=("layer*",))
    with pytest.raises(MemtraceError, match="--target is for --loss"):
        request(SEED, INPUT, targets=("2x3",))
    with pytest.raises(MemtraceError, match="unknown --amp"):
        request(SEED, INPUT, amp="fp8")
    with pytest.raises(MemtraceError, match="needs --device cuda"):
        request(SEED, INPUT, device="cpu", alloc_conf="expandable_segments:True")


def test_allocator_settings_are_parsed_once_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Config parses --alloc-conf when it is made (a bad one fails before any simulation) and keeps it:
    the Configs `replace` makes and the placement use that parse, not their own."""
    texts: list[str] = []
    parse = AllocatorConfig.parse.__func__  # type: ignore[attr-defined]

    def counted(cls: type[AllocatorConfig], text: str) -> AllocatorConfig:
        texts.append(text)
        return parse(cls, text)  # type: ignore[no-any-return]

    monkeypatch.setattr(AllocatorConfig, "parse", classmethod(counted))
    conf = "max_split_size_mb:4242,roundup_power2_divisions:4"  # no other test parses this text
    ran = run_recorded(request(SEED, INPUT, gpu="rtx4070", alloc_conf=conf))
    assert texts == [conf]
    assert ran.placed is not None and ran.placed.config == AllocatorConfig.parse(conf)
    assert ran.placed.config.max_split_size == 4242 * 1024 * 1024


@pytest.mark.parametrize("conf", [None, "expandable_segments:True", "max_split_size_mb:20"])
@pytest.mark.parametrize("snapshots", [0, 1, 10**9])
def test_one_placement_is_place_and_serve(
    ran_cuda: object, conf: str | None, snapshots: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one replay gives what `placement.place` and `served.serve` give, request for request; the
    segments at the reserved peak as well whether they come from a snapshot at every rise (0), from one
    where it is cheap (1, the default) or from the requests up to it replayed again (never a snapshot)."""
    monkeypatch.setattr(served, "_SNAPSHOT_EVERY", snapshots)
    trace = ran_cuda.trace  # type: ignore[attr-defined]
    config = AllocatorConfig.parse(conf) if conf else AllocatorConfig()
    one = place(trace, config)
    placed, stats = placement.place(trace, config)
    assert one.trace == placed
    assert one.stats == stats
    assert one.served == serve(trace, config)
    assert one.reserved == tuple(s.reserved for s in serve(trace, config).events)


def test_the_run_keeps_its_placement(ran_cuda: object) -> None:
    run = ran_cuda
    assert run.placed is not None  # type: ignore[attr-defined]
    assert run.device_trace is run.placed.trace  # type: ignore[attr-defined]
    assert run.result.cuda.reserved_peak_bytes == run.placed.stats.reserved_peak_bytes  # type: ignore[attr-defined]
    cpu = run_recorded(request(SEED, INPUT, device="cpu"))
    assert cpu.placed is None and cpu.device_trace is cpu.trace


def test_every_renderer_takes_the_record(ran_cuda: object, tmp_path: Path) -> None:
    record = Saved(ran_cuda.result, run=ran_cuda)  # type: ignore[attr-defined]
    text = io.StringIO()
    report.render(record, text)
    assert text.getvalue().startswith(f"memtrace  {record.result.model.name}:")
    saved.render(record, tmp_path / "r.json")
    assert Saved.from_json(json.loads((tmp_path / "r.json").read_text())).result == record.result
    html_report.render(record, tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    png = io.BytesIO()
    plots.render(record, png)
    assert png.getvalue()[:4] == b"\x89PNG"
    export_snapshot.render(record, tmp_path / "s.pickle")
    snapshot = pickle.loads((tmp_path / "s.pickle").read_bytes())
    assert snapshot["segments"] and snapshot["device_traces"][0]
    chrome = io.StringIO()
    export_trace.render(record, chrome)
    assert any(e["name"] == "reserved" for e in json.loads(chrome.getvalue())["traceEvents"])
    with pytest.raises(MemtraceError, match="fresh run"):
        export_trace.render(Saved(record.result), io.StringIO())


def test_saved_json_is_what_was_read(tmp_path: Path) -> None:
    """A result's JSON read back and written again is the same JSON."""
    record = Saved(run_recorded(request(SEED, INPUT, device="cpu")).result, map_line="map: x")
    data = record.to_json()
    assert Saved.from_json(data).to_json() == data


def test_request_of_the_cli_and_the_marker_agree() -> None:
    from memtrace.cli.common import make_request
    from memtrace.pytest_plugin import make_request as marker_request
    from memtrace.tracer.real.bench import Case
    from memtrace.tracer.real.bench_run import request_for

    cli = make_request(
        SEED, (InputSpec((8, 3, 144, 256)),), param_dtype="bf16", optimizer=OptimizerSpec("sgd"), device="cpu"
    )
    marker = marker_request(SEED, INPUT, dtype="bf16", optimizer="sgd", device="cpu")
    bench = request_for(Case("c", SEED, (INPUT,), dtype="bf16", optimizer="sgd"), "cpu")
    assert cli == marker == bench
    assert isinstance(cli, Request)
