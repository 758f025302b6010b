"""The prepared GPU run (benchmarks/gpu): every case's flags parse with memtrace's own `verify` parser, the
groups of issues 21-23 are there, cases skip in one line where they cannot run, the collection turns rows
into tables, and the README's `run` invocation fits the device tool."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from memtrace.cli.verify import verify

GPU = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU))
sys.path.insert(0, str(GPU.parent / "models"))

import collect_results  # noqa: E402
import verify_cases  # noqa: E402


def test_every_case_parses_with_memtraces_own_flags() -> None:
    cases = verify_cases.all_cases()
    assert len({c.name for c in cases}) == len(cases)
    for case in cases:
        ctx = verify.make_context("verify", [*case.flags, "--device", "cuda", "--json"])
        assert ctx.params["model"] == case.flags[0], case.name


def test_the_groups_of_issues_21_to_23_are_there() -> None:
    names = [c.name for c in verify_cases.all_cases()]
    gen = [n for n in names if n.startswith("gen/")]
    for kv in ("dynamic", "static", "offloaded", "offloaded_static"):
        assert any(f"/{kv}" in n for n in gen), kv
    assert any("sample" in n for n in gen) and any("anchor" in n for n in gen)
    assert {n.split("/")[1] for n in gen} >= {"gpt2", "llama", "mistral", "sdpa-decode", "anchor"}
    qlora = [c for c in verify_cases.all_cases() if c.name.startswith("qlora/")]
    assert qlora and all("bitsandbytes" in c.needs for c in qlora)
    assert any("paged" in " ".join(c.flags) and c.side for c in qlora)
    pairs = {n.rsplit("/", 1)[0] for n in names if n.startswith("compile/")}
    for pair in pairs:
        eager, compiled = (f"{pair}/{k}" for k in ("eager", "compiled"))
        assert eager in names and compiled in names
    flags = {c.name: c.flags for c in verify_cases.all_cases()}
    assert all(flags[f"{p}/compiled"] == (*flags[f"{p}/eager"], "--compile") for p in pairs)
    assert any("hf:adamw_torch_fused" in flags[f"{p}/eager"] for p in pairs)


def test_a_case_that_cannot_run_is_one_skipped_line() -> None:
    case = verify_cases.Case("x/y", ("m.py:build",), needs=("no_such_module_here",))
    assert verify_cases.skip_reason(case, "cuda").startswith("skipped: no_such_module_here not installed")
    cuda = verify_cases.Case("x/z", ("m.py:build",), cuda_only=True)
    assert (
        "CUDA only" in verify_cases.skip_reason(cuda, "cpu") and verify_cases.skip_reason(cuda, "cuda") == ""
    )
    row = verify_cases.run_case(case, Path("."), 1.0, "cpu")
    assert set(row) == {"case", "flags", "skipped"}


def _row(case: str, alloc: tuple[int, int], res: tuple[int, int], side: Any = None) -> dict[str, Any]:
    checks = [
        {"figure": f, "predicted": p, "measured": m, "error": (p - m) / m}
        for f, (p, m) in (("allocated", alloc), ("reserved", res))
    ]
    return {
        "case": case,
        "checks": checks,
        "env": {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0+cu130"},
    } | ({"side": side} if side else {})


def test_collect_results_turns_rows_into_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    suite = [_row("zoo/mlp/adamw", (100, 100), (200, 203)), _row("seed/x", (98, 100), (200, 200))]
    host = {"simulated": {"host_bytes": 990, "managed_bytes": 0, "compiled_range": None}}
    host["measured"] = {"host": {"allocated_bytes.peak": 1000}, "managed_bytes": 0}
    rng = {"simulated": {"compiled_range": {"low": 50, "high": 90}}, "measured": {}}
    groups = [
        _row("gen/llama/offloaded", (10, 10), (20, 20), host),
        _row("compile/c/eager", (100, 100), (120, 120), rng),
        _row("compile/c/compiled", (80, 80), (100, 100), rng),
        {"case": "qlora/q", "flags": [], "skipped": "skipped: bitsandbytes not installed"},
    ]
    for name, rows in (("verify", suite), ("groups", groups)):
        (parts / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text, env = collect_results.summary(parts)
    assert "1 of 2 cases ran within 1% allocated and 2% reserved" in text  # mlp's reserved is -1.48%
    assert "| gen/llama/offloaded | 990 | 1,000 | -1.000% |" in text
    assert "| compile/c | 100 | 80 | 80 | 50..90 | True |" in text
    assert "skipped: bitsandbytes not installed" in text
    assert collect_results.dest_name(env) == "h100-torch2.11"
    monkeypatch.setattr(sys, "argv", ["collect_results.py", str(tmp_path), "--dest", str(tmp_path / "r")])
    collect_results.main()
    assert (tmp_path / "r" / "h100-torch2.11" / "verify.jsonl").read_text() == (
        parts / "verify.jsonl"
    ).read_text()


def test_the_readme_holds_a_run_invocation_the_device_tool_takes() -> None:
    text = (GPU / "README.md").read_text()
    block = re.search(r"<!-- run-invocation -->\s*```json\s*(.*?)```", text, re.S)
    assert block is not None
    call = json.loads(block.group(1))
    assert len(call["command"]) <= 2000 and "benchmarks/gpu/run.sh" in call["command"]
    assert 1 <= call["timeout_s"] <= 600 and len(call["carry"]) <= 8


@pytest.mark.parametrize("script", ["run.sh"])
def test_run_sh_bounds_every_part(script: str) -> None:
    text = (GPU / script).read_text()
    for part in ("facts", "monitor", "cudnn", "suite", "groups"):
        assert re.search(rf"^part {part} ", text, re.M), part
