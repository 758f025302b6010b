"""benchmarks/public_generate.py, the public generation anchors: its pipeline (the cases' memtrace commands,
the JSON result, the table's row) run on a tiny GPTBigCode, so the script cannot rot; the 15B figures
themselves are in benchmarks/results/public-generate.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "public_generate.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("public_generate", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["public_generate"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_every_case_is_a_generate_command_on_the_a100() -> None:
    script = _script()
    names = [c.name for c in script.CASES]
    assert len(names) == len(set(names)) >= 5
    for case in script.CASES:
        argv = case.command()
        assert argv[:2] == ["memtrace", script.BUILDER] and "--mode" in argv and "a100-80gb" in argv
        assert f"input_ids=1x{case.prompt}:int64" in argv and case.published_gib > 0


def test_the_pipeline_on_a_tiny_model() -> None:
    """The flash case (SDPA's flash kernel asked for, the full prompt's logits) on a tiny model: the JSON
    result has the cuda figures, a decode phase, a KV cache, and the row prints them against the figure."""
    script = _script()
    case = next(c for c in script.CASES if c.name == "bf16-long-flash")
    result = script.simulate(case, small=True, in_process=True)
    simulated = script.allocated(result)
    assert simulated > 0 and result["totals"]["kv_cache"] > 0  # type: ignore[index]
    assert set(result["phases"]) == {"prefill", "decode"}  # type: ignore[arg-type]
    assert any("flash" in n for n in result["notes"])  # type: ignore[union-attr]
    row = script.row(case, simulated)
    assert row.startswith("| bf16-long-flash |") and f"{simulated:,} B" in row
