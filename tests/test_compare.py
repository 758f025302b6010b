"""`memtrace compare`: a saved prediction against a real run's memory snapshot (read as plain data only) or a
monitor file. The 'real' snapshot here is what a GPU would record if it ran the simulated trace."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from test_cli import SEED, run
from test_cuda_snapshot import _Recorder

from memtrace.tracer.core.records import Kind
from memtrace.tracer.core.specs import parse_input
from memtrace.tracer.simulate import Config, build, trace_model


def _snapshot(tmp_path: Path, scale_largest: float = 1.0) -> Path:
    """The simulated step's requests as a GPU trace, the largest one scaled (a mis-modelled tensor)."""
    model = build(SEED).model
    trace = trace_model(model, [torch.empty(2, 3, 144, 256, device="meta")], Config())
    made = [e for e in trace.events if e.kind is Kind.ALLOC]
    largest = max(made, key=lambda e: e.nbytes).storage
    rec = _Recorder()
    rec.recording = True
    for sid in trace.baseline:
        rec.malloc(sid, trace.storages[sid].nbytes)
        rec.trace[-1]["frames"] = [{"name": "build", "filename": "/models/build.py", "line": 1}]
    for ev in trace.events:
        if ev.kind is Kind.ALLOC:
            size = int(ev.nbytes * scale_largest) if ev.storage == largest else ev.nbytes
            rec.malloc(ev.storage, size)
            where = f"/models/{ev.module or 'step'}.py"
            rec.trace[-1]["frames"] = [{"name": ev.op, "filename": where, "line": 1}]
        else:
            rec.free(ev.storage)
    path = tmp_path / "real.pickle"
    path.write_bytes(rec.dump())
    return path


def _result(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Path:
    out = tmp_path / "result.json"
    code, _, err = run(capsys, SEED, "--input", "2x3x144x256", "--output", str(out))
    assert code == 0, err
    return out


def test_a_snapshot_of_the_predicted_step_agrees(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result, real = _result(capsys, tmp_path), _snapshot(tmp_path)
    code, out, err = run(capsys, "compare", str(result), str(real), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert {f["figure"]: f["error"] for f in data["figures"]} == {"allocated peak": 0.0, "reserved peak": 0.0}
    assert data["unmatched_predicted"] == [] and data["real_largest"][0]["where"]


def test_a_larger_real_tensor_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result, real = _result(capsys, tmp_path), _snapshot(tmp_path, scale_largest=1.5)
    code, out, err = run(capsys, "compare", str(result), str(real))
    assert code == 0, err
    assert "predicted vs real" in out and "(no predicted tensor of this size)" in out
    assert "(model.py:1)" not in out and ".py:1)" in out  # the frames name where they came from


def test_monitor_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = _result(capsys, tmp_path)
    data = json.loads(result.read_text())
    monitor = tmp_path / "monitor.json"
    history = [{"step": 100, "measured_peak_bytes": data["peak_bytes"], "reserved_bytes": 0}]
    monitor.write_text(json.dumps({"history": history}))
    code, out, err = run(capsys, "compare", str(result), str(monitor), "--json")
    assert code == 0, err
    assert json.loads(out)["figures"][0]["error"] == 0.0


class Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_a_pickle_that_names_code_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = _result(capsys, tmp_path)
    evil = tmp_path / "evil.pickle"
    evil.write_bytes(pickle.dumps({"segments": [], "x": Evil()}))
    code, out, err = run(capsys, "compare", str(result), str(evil))
    assert code == 2 and "pwned" not in out + err
    assert err.startswith("memtrace: error:") and "refused" in err and len(err.splitlines()) == 1


def test_not_a_result(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    code, _, err = run(capsys, "compare", str(bad), str(bad))
    assert code == 2 and "is not a memtrace result" in err


def test_inputs_parse() -> None:  # the snapshot's model input, as the CLI parses it
    assert parse_input("2x3x144x256").shape == (2, 3, 144, 256)
