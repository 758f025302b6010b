"""fit and sweep for serving (`--mode generate`): the largest batch, the longest prompt (`input_ids=1xS`) and
the longest generation (`--max-new-tokens N`), each answer proven by simulating it and the value above it;
the model's positions bounding a prompt or generation length; sweep's KV cache and peak-phase columns; the
CLI's flags and its one-line refusals. On tiny Hugging Face models (GPT-2, Llama with grouped-query
attention), the answer's figure held against the CPU allocator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_cli import run as cli
from test_generate import _generate

from memtrace.tracer.core.records import Category, GpuSpec, Phase, Result
from memtrace.tracer.core.specs import Headroom
from memtrace.tracer.real.measure import Measured, measure_request
from memtrace.tracer.simulate import Request, run
from memtrace.tracer.studies.fit import bind, fit, sweep

pytest.importorskip("transformers")

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
GPT2 = f"{MODELS / 'hf_gpt2.py'}:build"
LLAMA = f"{MODELS / 'hf_llama.py'}:build"
TINY_LLAMA = {"hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "vocab": 256, "positions": 96}
NONE = Headroom(nbytes=0)


def _serve(builder: str, prompt: str, tokens: int | str, args: dict[str, Any] | None = None) -> Request:
    return _generate(builder, prompt, tokens, args)


def _between(req: Request, symbol: str, low: int, high: int) -> GpuSpec:
    """A budget half-way between the peaks at two values: the answer lies between them, away from both."""
    a, b = (run(bind(req, {symbol: v})).peak_bytes for v in (low, high))
    assert b > a, (symbol, a, b)
    return GpuSpec("budget", (a + b) // 2)


def _proven(req: Request, symbol: str, gpu: GpuSpec) -> tuple[int, Result]:
    """fit's answer, checked: it fits by a simulation at the answer, and the answer + 1 does not."""
    res = fit(req, gpu, NONE)
    assert res.max_value >= 1 and not res.capped, res.probes
    at, above = (run(bind(req, {symbol: v})) for v in (res.max_value, res.max_value + 1))
    assert at.peak_bytes == res.peak_bytes <= gpu.bytes < above.peak_bytes == res.next_peak_bytes
    assert res.serving is not None and not res.serving.position_bound
    return res.max_value, at


def test_fit_the_batch_of_a_generation() -> None:
    req = _serve(GPT2, "Bx16", 6, {"positions": 64})
    best, at = _proven(req, "B", _between(req, "B", 2, 12))
    assert 2 <= best < 12
    assert at.peak.by_category.get(Category.KV_CACHE, 0) > 0


def test_fit_the_longest_prompt_against_the_cpu_allocator() -> None:
    """Llama with grouped-query attention: the longest prompt S that fits with 4 new tokens; the figure at
    the answer is the CPU allocator's within 1%."""
    req = _serve(LLAMA, "1xS", 4, TINY_LLAMA)
    gpu = _between(req, "S", 8, 64)
    best, at = _proven(req, "S", gpu)
    res = fit(req, gpu, NONE)  # the same search again: its record
    assert res.serving is not None and res.serving.context_tokens == best + 4
    assert res.serving.max_positions == 96 and res.serving.position_limit == 92
    measured = measure_request(bind(req, {"S": best}))
    assert isinstance(measured, Measured)
    assert at.peak_bytes == pytest.approx(measured.peak, rel=0.01)


def test_fit_the_longest_generation() -> None:
    """--max-new-tokens N: the longest generation; the total context is the prompt and N."""
    req = _serve(GPT2, "1x4", "N", {"positions": 48})
    best, at = _proven(req, "N", _between(req, "N", 2, 40))
    assert 2 <= best < 40
    assert at.peak.phase is Phase.DECODE


def test_the_models_positions_stop_the_search_and_say_so() -> None:
    req = _serve(GPT2, "1x8", "N", {"positions": 48})
    res = fit(req, GpuSpec("big", 10**9), NONE)
    assert res.serving is not None and res.serving.position_bound
    assert res.max_value == res.serving.position_limit == 40 and res.serving.context_tokens == 48
    assert run(bind(req, {"N": 40})).peak_bytes == res.peak_bytes


def test_sweep_over_context_has_the_cache_and_the_peaks_phase() -> None:
    req = _serve(GPT2, "1xS", 8, {"positions": 64})
    rows = sweep(req, [[{"S": 4}, {"S": 16}, {"S": 60}]], [GpuSpec("3MB", 3 * 10**6)], NONE)
    assert "max_position_embeddings (64)" in rows[2].error  # 60 + 8 positions: refused in its row
    for row in rows[:2]:
        alone = run(bind(req, row.values))
        assert row.peak_bytes == alone.peak_bytes
        assert row.kv_cache_bytes == alone.peak.by_category[Category.KV_CACHE] > 0
        assert row.peak_phase == alone.peak.phase.value and row.token_index == alone.peak.token_index
    assert rows[1].kv_cache_bytes > rows[0].kv_cache_bytes


def test_cli_fit_and_sweep_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = [GPT2, "--arg", "positions=32", "--mode", "generate", "--device", "cpu", "--headroom", "0"]
    fit_n = ["--input", "input_ids=1x8:int64", "--max-new-tokens", "N", "--gpu", "1GB"]
    code, out, err = cli(capsys, "fit", *base, *fit_n, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["symbol"] == "N" and data["max_value"] == 24 and data["position_bound"] is True
    assert data["max_positions"] == 32 and data["context_tokens"] == 32
    code, out, err = cli(capsys, "fit", *base, *fit_n)
    assert code == 0, err
    assert "max_position_embeddings (32) stops it there, not the GPU" in out
    plot = tmp_path / "sweep.png"
    code, out, err = cli(
        capsys,
        "sweep",
        *base,
        "--input",
        "input_ids=1xS:int64",
        "--max-new-tokens",
        "N",
        "--set",
        "S=4,8",
        "--set",
        "N=2",
        "--format",
        "json",
        "--plot",
        str(plot),
    )
    assert code == 0, err
    rows = json.loads(out)
    assert [r["values"] for r in rows] == [{"S": 4, "N": 2}, {"S": 8, "N": 2}]
    assert all(r["kv_cache_bytes"] > 0 and r["peak_phase"] for r in rows)
    assert plot.stat().st_size > 0


BAD = {
    "a malformed --max-new-tokens": (["--max-new-tokens", "n2"], "--max-new-tokens"),
    "two symbols": (["--input", "input_ids=1xS:int64", "--max-new-tokens", "N"], "fit takes one symbol"),
    "no room for N": (["--input", "input_ids=1x40:int64", "--max-new-tokens", "N"], "leaves no room"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_cli_fit_refuses_bad_input_in_one_line(capsys: pytest.CaptureFixture[str], case: str) -> None:
    flags, words = BAD[case]
    inputs = [] if "--input" in flags else ["--input", "input_ids=Bx8:int64"]
    code, _, err = cli(
        capsys, "fit", GPT2, "--arg", "positions=32", "--mode", "generate", "--device", "cpu", "--gpu", "1GB",
        *inputs, *flags,
    )  # fmt: skip
    lines = [line for line in err.splitlines() if line.startswith("memtrace")]
    assert code == 2 and len(lines) == 1 and words in lines[0], err


def test_a_symbolic_n_outside_fit_and_sweep_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(
        capsys, GPT2, "--input", "input_ids=1x8:int64", "--mode", "generate", "--device", "cpu",
        "--max-new-tokens", "N",
    )  # fmt: skip
    assert code == 2 and "--max-new-tokens N is a symbol" in err and "Traceback" not in err
