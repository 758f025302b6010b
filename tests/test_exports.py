"""The exports: the predicted step as a `torch.cuda.memory._snapshot()` pickle, read by PyTorch's own text
helpers and shaped like real snapshots (cached public ones, else the TypedDicts of `_snapshot`'s
documentation), replayed to the same segments; and the Chrome/Perfetto trace."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.cuda._memory_viz as memory_viz
from test_cli import SEED, run

from memtrace.cli.main import main
from memtrace.tracer.core.records import InputSpec, Result, Trace
from memtrace.tracer.devices.cuda.snapshot import load_plain_pickle, load_snapshot
from memtrace.tracer.devices.cuda.snapshot_replay import replay_snapshot
from memtrace.tracer.simulate import Request, run_traced

INPUT = "8x3x144x256"


@pytest.fixture(scope="module")
def traced() -> tuple[Trace, Result]:
    return run_traced(Request(SEED, (InputSpec((8, 3, 144, 256)),)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """`memtrace ... --export-snapshot --export-trace --output`, as a user runs it."""
    out = tmp_path_factory.mktemp("exports")
    argv = [SEED, "--input", INPUT, "--gpu", "rtx4070", "--output", str(out / "r.json")]
    argv += ["--export-snapshot", str(out / "s.pickle"), "--export-trace", str(out / "t.json")]
    assert _main(*argv) == 0
    return (
        json.loads((out / "r.json").read_text()),
        json.loads((out / "t.json").read_text()),
        out / "s.pickle",
    )


def _main(*argv: str) -> int:
    try:
        main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _entries(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for trace in snapshot["device_traces"] for e in trace]


def test_snapshot_is_plain_data_read_by_pytorchs_text_helpers(exported: Any) -> None:
    data, _, path = exported
    snapshot = load_plain_pickle(path)  # refuses any class or function: plain containers only
    text = memory_viz.segsum(snapshot)
    reserved = data["cuda"]["reserved_peak_bytes"]
    segments = snapshot["segments"]
    assert f"segments: {len(segments)}\n" in text
    total = sum(s["total_size"] for s in segments)
    assert f"total_reserved: {memory_viz.Bytes(total)}" in text
    assert total <= reserved
    trace = memory_viz.trace(snapshot)
    assert trace.startswith("Device 0 ----------------\n")
    assert f"{len(_entries(snapshot))} entries" in trace
    assert "cudaMalloc(" in trace and "del " in trace and "# free completed for " in trace


def test_snapshot_replays_to_its_own_segments_and_peaks(exported: Any) -> None:
    """PyTorch's allocator semantics, as memtrace's replay of real snapshots checks them, hold for the
    export: every address and segment agrees, and the reserved peak is the result's."""
    data, _, path = exported
    snap = load_snapshot(path)
    replay = replay_snapshot(snap)
    assert replay.match
    reserved, peak = 0, 0
    for e in _entries(load_plain_pickle(path)):
        reserved += {"segment_alloc": e["size"], "segment_free": -e["size"]}.get(e["action"], 0)
        peak = max(peak, reserved)
    assert peak == data["cuda"]["reserved_peak_bytes"]


def test_frames_name_the_module_and_the_op(exported: Any, traced: tuple[Trace, Result]) -> None:
    _, result = traced
    snapshot = load_plain_pickle(exported[2])
    allocs = [e for e in _entries(snapshot) if e["action"] == "alloc"]
    made = [t for t in result.peak.top_tensors if t.op]  # parameters are made by no op of the step
    assert made
    for top in made:
        assert any(e["frames"][0] == {"filename": top.module, "line": 0, "name": top.op} for e in allocs)
    assert all(e["frames"] and e["frames"][0]["name"] for e in allocs)
    blocks = [b for s in snapshot["segments"] for b in s["blocks"] if b["state"] == "active_allocated"]
    assert blocks and all(b["frames"] for b in blocks)


def _real_snapshot() -> dict[str, Any] | None:
    """The smallest cached public snapshot in the current format (its trace entries carry time_us)."""
    root = Path(os.environ.get("MEMTRACE_SNAPSHOT_CACHE", Path.home() / ".cache" / "memtrace" / "snapshots"))
    files = sorted(root.rglob("*.pickle"), key=lambda p: p.stat().st_size) if root.is_dir() else []
    for path in files:
        if path.stat().st_size == 0:
            continue
        data = load_plain_pickle(path)
        entries = _entries(data)
        if data.get("segments") and entries and "time_us" in entries[0]:
            return dict(data)
    return None


def _documented() -> dict[str, set[str]]:
    """The fields of the TypedDicts in `torch.cuda.memory._snapshot`'s documentation, by class name."""
    doc = torch.cuda.memory._snapshot.__doc__ or ""
    classes: dict[str, set[str]] = {}
    for name, body in re.findall(r"class (\w+)\(TypedDict\):\n(.*?)(?=\n\s*class |\Z)", doc, re.S):
        classes[name] = set(re.findall(r"^\s{12}(\w+):", body, re.M))
    return classes


def test_key_sets_equal_a_real_snapshots(exported: Any) -> None:
    """Each record has the keys of a real snapshot's (a cached public one, recorded by an older PyTorch) plus
    those the installed PyTorch documents beyond them (2.13 adds the trace entry's pool_id); without the
    cache, the documented keys alone. `device_free` is the OOM entry's, the fx fields only with
    augment_with_fx_traces."""
    ours = load_plain_pickle(exported[2])
    segment, block = ours["segments"][0], ours["segments"][0]["blocks"][0]
    entry = next(e for e in _entries(ours) if e["action"] == "alloc")
    doc = _documented()
    assert {"Segment", "Block", "TraceEntry", "Frame"} <= set(doc), doc
    documented_entry = doc["TraceEntry"] - {"device_free"}
    real = _real_snapshot()
    if real is None:
        assert doc["Segment"] <= set(segment) and doc["Block"] <= set(block)
        assert documented_entry <= set(entry)
        return
    real_entry = next(e for e in _entries(real) if e["action"] == "alloc")
    assert set(segment) == set(real["segments"][0]) | doc["Segment"]
    assert set(block) == set(real["segments"][0]["blocks"][0]) | doc["Block"]
    assert set(entry) == set(real_entry) | documented_entry
    assert set(entry["frames"][0]) == set(real_entry["frames"][0]) == {"filename", "line", "name"}
    assert set(entry) - set(real_entry) <= {"pool_id"}


def test_chrome_trace(exported: Any, traced: tuple[Trace, Result]) -> None:
    data, chrome, _ = exported
    events = chrome["traceEvents"]
    assert {e["ph"] for e in events} == {"M", "C", "X", "i"}
    for e in events:
        assert {"name", "ph", "pid"} <= set(e)
        if e["ph"] != "M":
            assert isinstance(e["ts"], int)
        if e["ph"] == "X":
            assert e["dur"] >= 1
    (peak,) = [e for e in events if e["ph"] == "i"]
    memory = {e["ts"]: e["args"] for e in events if e["ph"] == "C" and e["name"] == "memory"}
    assert sum(memory[peak["ts"]].values()) == data["peak_bytes"]
    assert max(sum(v.values()) for v in memory.values()) == max(
        data["peak_bytes"], data["first_iteration_peak_bytes"]
    )
    reserved = [e["args"]["reserved"] for e in events if e["name"] == "reserved"]
    assert max(reserved) == data["cuda"]["reserved_peak_bytes"]
    ops = [e for e in events if e["ph"] == "X" and e.get("cat") == "op"]
    assert any(e["ts"] <= peak["ts"] < e["ts"] + e["dur"] and e["name"] == data["peak"]["op"] for e in ops)
    _, result = traced
    assert len(memory) == len(traced[0].events)
    assert result.peak_bytes == data["peak_bytes"]


def test_export_snapshot_needs_cuda(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(
        capsys, SEED, "--input", INPUT, "--device", "cpu", "--export-snapshot", str(tmp_path / "s.pickle")
    )
    assert code == 2 and "--export-snapshot" in err and "--device cuda" in err
    code, _, err = run(capsys, SEED, "--input", INPUT, "--export-trace", str(tmp_path / "t.txt"))
    assert code == 2 and "--export-trace" in err and ".json" in err
