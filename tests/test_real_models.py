"""Real-world models: a Hugging Face causal LM built from a config (no download), through the map's fallback,
and a torchvision model. Each skips cleanly when its library is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import run

REPO = Path(__file__).resolve().parent.parent
GPT2 = str(REPO / "benchmarks" / "models" / "hf_gpt2.py") + ":build"


def test_hf_causal_lm_layer_table_through_the_fallback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("transformers")
    graph = tmp_path / "gpt2.json"
    code, out, err = run(
        capsys,
        GPT2,
        "--input",
        "2x64:int64",
        "--layers",
        "--depth",
        "3",
        "--device",
        "cpu",
        "--graph",
        str(graph),
    )
    assert code == 0, err
    assert "map: torch.fx could not trace the model, so the layers come from module hooks" in out
    assert "transformer.h.0" in out and "GPT2Block" in out and "total" in out
    assert json.loads(graph.read_text())["nodes"]
    code, out, err = run(capsys, GPT2, "--input", "2x64:int64", "--json", "--graph", str(graph))
    data = json.loads(out)
    assert data["map"]["path"] == "modules" and data["map"]["reason"]
    assert sum(r["peak_bytes"] for r in data["layers"]) == data["peak_bytes"]


def test_hf_causal_lm_matches_the_cpu_allocator() -> None:
    pytest.importorskip("transformers")
    import importlib.util

    import torch
    from reference import measure

    from memtrace.tracer.core.specs import parse_optimizer
    from memtrace.tracer.simulate import simulate

    spec = importlib.util.spec_from_file_location("hf_gpt2", GPT2.rsplit(":", 1)[0])
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = simulate(mod.build, ["2x64:int64"], device="cpu", optimizer="adamw")
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (2, 64))
    ref = measure(mod.build(), [ids], "train", parse_optimizer("adamw"))
    assert abs(res.peak_bytes - ref.peak) / ref.peak <= 0.01, (res.peak_bytes, ref.peak)


def test_torchvision_model_layer_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    builder = tmp_path / "tv.py"
    builder.write_text("from torchvision.models import resnet18\n\ndef build():\n    return resnet18()\n")
    code, out, err = run(capsys, f"{builder}:build", "--input", "2x3x224x224", "--layers", "--depth", "1")
    assert code == 0, err
    assert "layer4" in out and "map: torch.fx symbolic trace" in out
