"""`memtrace bench`: the gates on hand-made runs, then the command end to end on a tiny suite, measured on
the CPU, against doctored baselines both ways."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from memtrace.cli.main import main
from memtrace.tracer.real.bench import (
    BenchRun,
    Case,
    CaseResult,
    Figures,
    Machine,
    errors,
    growth,
    merged,
    select,
    why_moved,
)

HOST = Machine("platform=x86_64 cpu_isa=avx2 threads=2", "platform=x86_64 cpu_isa=avx2 threads=2")


def _row(name: str, predicted: int, measured: int | None = None, **by: int) -> CaseResult:
    return CaseResult(
        name,
        "ok",
        predicted=Figures(predicted),
        measured=None if measured is None else Figures(measured),
        by_category=by,
        dominant="fc1 (Linear)",
    )


def _run(*rows: CaseResult, machine: Machine = HOST) -> BenchRun:
    return BenchRun("cpu", machine, rows)


def test_growth_beyond_the_threshold_fails_and_names_the_category() -> None:
    old = _run(_row("a", 1000, 1000, activation=400, parameter=600))
    new = _run(_row("a", 1011, 1011, activation=411, parameter=600))
    moves = growth(new, old, threshold=0.01)
    assert [(m.kind, m.failing) for m in moves] == [("predicted", True), ("measured", True)]
    assert moves[0].why == "activation +11 B"
    assert moves[0].change == pytest.approx(0.011)


def test_growth_within_the_threshold_and_shrinking_pass() -> None:
    old = _run(_row("a", 1000), _row("b", 1000))
    new = _run(_row("a", 1010), _row("b", 500))
    assert [m.failing for m in growth(new, old, threshold=0.01)] == [False, False]
    assert growth(old, old, threshold=0.0) == []


def test_growth_is_not_compared_across_hosts() -> None:
    other = Machine("platform=aarch64 cpu_isa=none threads=4", "platform=aarch64 cpu_isa=none threads=4")
    moves = growth(_run(_row("a", 2000, 2000)), _run(_row("a", 1000, 1000), machine=other), 0.01)
    assert moves and not any(m.failing for m in moves)
    assert all(m.why.startswith("not compared") for m in moves)


def test_error_gate() -> None:
    run = _run(_row("exact", 1000, 1000), _row("off", 1020, 1000))
    assert [(m.case, m.failing) for m in errors(run, 0.01)] == [("exact", False), ("off", True)]
    assert not any(m.failing for m in errors(run, 0.02))


def test_why_moved_orders_by_size_and_names_a_new_dominant_layer() -> None:
    text = why_moved(
        {"activation": 10, "temporary": 5}, {"activation": 5, "temporary": 105}, "a (X)", "b (Y)"
    )
    assert text == "temporary +100 B, activation -5 B, dominant layer a (X) -> b (Y)"


def test_json_round_trip_and_schema() -> None:
    run = _run(_row("a", 1000, 990, activation=1), CaseResult("tv", "skipped", "needs torchvision"))
    data = json.loads(json.dumps(run.to_json()))
    assert data["schema"] == 1 and data["kind"] == "memtrace-bench"
    assert data["cases"][0]["error"]["allocated"] == pytest.approx(10 / 990)
    assert BenchRun.from_json(data) == run
    with pytest.raises(ValueError, match="schema"):
        BenchRun.from_json({**data, "schema": 99})


def test_select_by_tag_name_and_filter() -> None:
    cases = [Case("efficientnet", "m.py:f", ()), Case("gpt2", "m.py:f", (), tags=("ci",))]
    assert [c.name for c in select(cases, [], "ci")] == ["gpt2"]  # a tag, not a part of "efficientnet"
    assert [c.name for c in select(cases, [], "net")] == ["efficientnet"]
    assert [c.name for c in select(cases, ["gpt2"], None)] == ["gpt2"]
    with pytest.raises(ValueError, match="unknown case"):
        select(cases, ["nope"], None)


def test_merged_keeps_the_cases_not_run() -> None:
    old = _run(_row("a", 1), _row("b", 2))
    assert [c.name for c in merged(old, _run(_row("a", 3))).cases] == ["b", "a"]


# --------------------------------------------------------------------------- the command

MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn

    def mlp():
        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8))

    def two_faced():
        # built wider for real than on meta: the prediction misses the measurement
        return nn.Linear(64, 64 if torch.empty(0).is_meta else 512)
    """
)


def _suite(tmp_path: Path) -> Path:
    (tmp_path / "models.py").write_text(MODELS)
    suite = tmp_path / "suite.py"
    suite.write_text(
        textwrap.dedent(
            f"""
            from memtrace.tracer.real.bench import Case
            M = {str(tmp_path / "models.py")!r}
            SUITE = (
                Case("mlp", M + ":mlp", ("16x64",), tags=("ci",)),
                Case("two_faced", M + ":two_faced", ("16x64",)),
                Case("needs_missing", M + ":mlp", ("16x64",), needs=("no_such_module_here",), tags=("ci",)),
            )
            """
        )
    )
    return suite


def _bench(*args: str) -> int:
    with pytest.raises(SystemExit) as exc:
        main(["bench", *args])
        raise SystemExit(0)
    return int(exc.value.code or 0)


def _doctored(path: Path, factor: float, out: Path) -> Path:
    data: dict[str, Any] = json.loads(path.read_text())
    for case in data["cases"]:
        for key in ("predicted", "measured"):
            if case[key]:
                case[key]["allocated"] = int(case[key]["allocated"] * factor)
    out.write_text(json.dumps(data))
    return out


def test_bench_gates_against_doctored_baselines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite, out = _suite(tmp_path), tmp_path / "run.json"
    assert _bench("--suite", str(suite), "--filter", "ci", "--output", str(out)) == 0
    data = json.loads(out.read_text())
    mlp, skipped = data["cases"]
    assert mlp["measured"]["allocated"] > 0 and abs(mlp["error"]["allocated"]) <= 0.01
    assert skipped["status"] == "skipped" and "no_such_module_here" in skipped["reason"]
    assert mlp["simulate_seconds"] > 0 and mlp["real_seconds"] > 0
    base = ["--suite", str(suite), "mlp", "--baseline"]
    assert _bench(*base, str(out)) == 0  # the same
    assert _bench(*base, str(_doctored(out, 1.1, tmp_path / "higher.json"))) == 0  # the step shrank
    capsys.readouterr()
    assert _bench(*base, str(_doctored(out, 0.9, tmp_path / "lower.json"))) == 1  # the step grew 11%
    text = capsys.readouterr().out
    assert "What moved" in text and "predicted allocated" in text and "measured allocated" in text
    assert _bench(*base, str(tmp_path / "lower.json"), "--threshold", "12%") == 0


def test_bench_error_beyond_tolerance_exits_1(tmp_path: Path) -> None:
    suite = _suite(tmp_path)
    assert _bench("--suite", str(suite), "two_faced") == 1
    assert _bench("--suite", str(suite), "two_faced", "--no-measure") == 0


def test_update_baseline_then_gate(tmp_path: Path) -> None:
    suite, base = _suite(tmp_path), tmp_path / "base.json"
    assert (
        _bench("--suite", str(suite), "mlp", "--no-measure", "--baseline", str(base), "--update-baseline")
        == 0
    )
    assert BenchRun.from_json(json.loads(base.read_text())).cases[0].measured is None
    assert _bench("--suite", str(suite), "mlp", "--no-measure", "--baseline", str(base)) == 0


def test_cuda_without_a_gpu_records_measured_null(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the case is measured")
    out = tmp_path / "cuda.json"
    assert _bench("--suite", str(_suite(tmp_path)), "mlp", "--device", "cuda", "--output", str(out)) == 0
    case = json.loads(out.read_text())["cases"][0]
    assert case["measured"] is None and case["error"] is None and case["predicted"]["reserved"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threshold", "2"], "ambiguous"),
        (["--tolerance", "x%"], "malformed tolerance"),
        (["nope"], "unknown case 'nope'"),
        (["--filter", "zzz"], "no case matches"),
        (["--update-baseline"], "--update-baseline writes the --baseline FILE"),
        (["--baseline", "/nonexistent/b.json"], "file not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert _bench("--suite", str(_suite(tmp_path)), *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_baseline_that_is_no_bench_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": 3, "peak_bytes": 1}))
    assert _bench("--suite", str(_suite(tmp_path)), "mlp", "--baseline", str(bad)) == 2
    assert "not a memtrace bench result" in capsys.readouterr().err


def test_the_repository_suite_loads_and_its_ci_subset_needs_no_torchvision() -> None:
    from memtrace.tracer.real.bench_run import load_suite

    suite = load_suite(Path(__file__).resolve().parent.parent / "benchmarks" / "suite.py")
    ci = select(suite, [], "ci")
    assert ci and all("torchvision" not in c.needs for c in ci)
    assert {"resnet50", "vit_b_16", "gpt2", "bert", "llama", "t5", "lstm_tagger", "unet_diffusion"} <= {
        c.name for c in suite
    }


def test_a_needed_module_that_fails_to_import_skips_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memtrace.tracer.real.bench_run import run_case

    (tmp_path / "broken_extension.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    row = run_case(Case("tv", "m.py:f", ("1x3x8x8",), needs=("broken_extension",)), "cpu", measure=True)
    assert row.status == "skipped"
    assert row.reason == (
        "needs broken_extension, which does not import here: "
        "RuntimeError: operator torchvision::nms does not exist"
    )
