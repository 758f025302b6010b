"""`memtrace.monitor.MemoryMonitor` in a plain training loop on the CPU: its prediction is
`memtrace.simulate`'s for the same step (optimizer class and arguments, autocast state, accumulation read
from the run), the CPU allocator's figure for it, drift warns exactly once, and `memtrace compare` reads the
file it writes."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from reference import measure
from test_cli import run
from torch import nn

import memtrace
from memtrace.monitor import MemoryDriftWarning, MemoryMonitor, Reading, Row
from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.engine.recipes import Recipe
from memtrace.tracer.real.running import optimizer_spec
from memtrace.tracer.simulate import Config


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


def _train(
    model: nn.Module, opt: torch.optim.Optimizer, mon: MemoryMonitor, steps: int, amp: bool = False
) -> None:
    """The user's loop: the step, then mon.step(batch) (inside autocast when the step runs under it)."""
    for _ in range(steps):
        x = torch.randn(8, 64)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = model(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            mon.step(x)


def _readings(*peaks: int) -> Iterator[Reading]:
    return iter(Reading(p, 2 * p, p // 2, 2 * p) for p in peaks)


def test_prediction_is_simulate_s_with_the_optimizer_s_arguments() -> None:
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, amsgrad=True)
    readings = _readings(1, 2, 3)
    mon = MemoryMonitor(model, opt, every=1, measure=lambda: next(readings), log=None)
    _train(model, opt, mon, 3)
    expected = memtrace.simulate(
        _mlp(), ["8x64"], optimizer="adamw:lr=0.01,weight_decay=0.1,amsgrad=True", device="cpu"
    )
    assert mon.result is not None and mon.result.optimizer == "adamw:lr=0.01,weight_decay=0.1,amsgrad=True"
    assert mon.result.peak_bytes == expected.peak_bytes
    predicted = [r.predicted_peak_bytes for r in mon.history]
    # the first window holds the first step (the optimizer's state appears there), the others the steady one
    assert predicted == [expected.all_steps_peak_bytes, expected.peak_bytes, expected.peak_bytes]
    plain = memtrace.simulate(_mlp(), ["8x64"], optimizer="adamw", device="cpu")
    assert expected.peak_bytes > plain.peak_bytes  # amsgrad's third moment: the arguments were read


def test_prediction_matches_the_cpu_allocator() -> None:
    """Single-tensor Adam with weight decay makes a temporary per parameter: read from the optimizer the
    user built, the prediction is the CPU allocator's figure for that step."""
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0.1)
    mon = MemoryMonitor(model, opt, every=10, log=None)
    _train(model, opt, mon, 1)
    assert mon.result is not None
    real = measure(_mlp(), [torch.randn(8, 64)], config=Config(optimizer=optimizer_spec(opt), device="cpu"))
    assert abs(mon.result.peak_bytes - real.peak) <= 16, (mon.result.peak_bytes, real.peak)
    no_decay = memtrace.simulate(_mlp(), ["8x64"], optimizer="adam", device="cpu")
    assert mon.result.peak_bytes > no_decay.peak_bytes


def test_autocast_state_and_accumulation_are_read() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mon = MemoryMonitor(model, opt, every=1, accumulate=2, log=None)
    _train(model, opt, mon, 1, amp=True)
    assert mon.result is not None and mon.result.recipe == "amp bf16; accumulate 2"
    expected = memtrace.simulate(
        _mlp(),
        ["8x64"],
        optimizer="sgd:lr=0.1,momentum=0.9",
        device="cpu",
        recipe=Recipe("bf16", accumulate=2),
    )
    assert mon.result.peak_bytes == expected.peak_bytes


def test_drift_beyond_tolerance_warns_exactly_once() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = memtrace.simulate(_mlp(), ["8x64"], optimizer="sgd:lr=0.1", device="cpu")
    edge = result.peak_bytes * 105 // 100  # exactly 5% over: within the tolerance
    readings = _readings(result.all_steps_peak_bytes, edge, edge + 1, 2 * edge, edge + 2)
    lines: list[str] = []
    mon = MemoryMonitor(
        model, opt, every=2, tolerance="5%", result=result, measure=lambda: next(readings), log=lines.append
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(10):
            row = mon.step()
            if step == 5:  # the third reading, one byte past 5%
                assert row is not None and row.drift(mon.tolerance)
                assert len([w for w in caught if w.category is MemoryDriftWarning]) == 1
    drift = [w for w in caught if w.category is MemoryDriftWarning]
    assert len(drift) == 1
    message = str(drift[0].message)
    top = max(result.peak.by_category.items(), key=lambda kv: kv[1])[0].value
    assert "at step 6" in message and top in message and "tolerance 5%" in message
    assert [r.step for r in mon.history] == [2, 4, 6, 8, 10] and len(lines) == 5
    assert lines[1].startswith("memtrace step 4: measured peak") and "error -4.76%" in lines[1]


def test_off_cuda_nothing_is_measured_and_compare_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lines: list[str] = []
    mon = MemoryMonitor(model, opt, every=1, log=lines.append)
    _train(model, opt, mon, 2)
    assert [r.measured_peak_bytes for r in mon.history] == [None, None]
    assert "measured peak n/a" in lines[0] and "error n/a" in lines[0]
    path = tmp_path / "monitor.json"
    mon.to_json(path)
    code, _, err = run(capsys, "compare", str(path), str(path))
    assert code == 2 and "no measured row" in err and len(err.splitlines()) == 1


def test_compare_reads_the_monitor_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = _mlp()
    opt = torch.optim.Adam(model.parameters())
    readings = _readings(300_000, 400_000)
    mon = MemoryMonitor(model, opt, every=1, measure=lambda: next(readings), log=None)
    _train(model, opt, mon, 2)
    assert mon.result is not None
    path, result = tmp_path / "monitor.json", tmp_path / "result.json"
    mon.to_json(path)
    result.write_text(json.dumps(mon.result.to_json()))
    saved = json.loads(path.read_text())
    assert (
        saved["history"][1] == {**mon.history[1].to_json()}
        and saved["history"][1]["reserved_bytes"] == 800_000
    )
    for given in (result, path):  # a saved result, or the prediction the monitor file holds
        code, out, err = run(capsys, "compare", str(given), str(path), "--json")
        assert code == 0, err
        figure = json.loads(out)["figures"][0]
        assert figure["predicted"] == mon.result.all_steps_peak_bytes and figure["measured"] == 400_000


def test_row_error_is_verify_s() -> None:
    row = Row(10, 1_000, 800, None, None, None)
    assert row.error == pytest.approx(0.25) and row.drift(0.1) is False
    assert Row(10, 1_000, 1_200, None, None, None).drift(0.1) is True
    assert row.metrics() == {"memtrace/predicted_peak": 1000.0, "memtrace/measured_peak": 800.0}


def test_bad_input_is_one_line() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(MemtraceError, match="tolerance"):
        MemoryMonitor(model, opt, tolerance="five")
    mon = MemoryMonitor(model, opt, log=None)
    with pytest.raises(MemtraceError, match=r"non-tensor entries \(name\)"):
        mon.step({"x": torch.randn(8, 64), "name": "a"})
    with pytest.raises(MemtraceError, match="needs the batch"):
        MemoryMonitor(model, opt, log=None).step()


def test_on_cuda_the_allocator_s_peaks_are_read_and_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA reading's wiring, with the allocator's functions stood in for (no GPU here): peaks reset at
    construction and after every reading, on the module's GPU."""
    import memtrace.monitor as monitor

    calls: list[tuple[str, int]] = []
    figures = {"max_memory_allocated": 700, "max_memory_reserved": 900, "memory_allocated": 300}
    figures["memory_reserved"] = 800
    for name, value in figures.items():
        monkeypatch.setattr(torch.cuda, name, lambda i, n=name, v=value: calls.append((n, i)) or v)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda i: calls.append(("reset", i)))
    monkeypatch.setattr(monitor, "cuda_index", lambda model: 1)
    result = memtrace.simulate(_mlp(), ["8x64"], optimizer="sgd", device="cpu")
    mon = MemoryMonitor(_mlp(), None, every=1, result=result, log=None)
    assert calls == [("reset", 1)]
    row = mon.step()
    assert row == Row(1, result.all_steps_peak_bytes, 700, 900, 300, 800)
    assert calls[1:] == [(n, 1) for n in figures] + [("reset", 1)]
