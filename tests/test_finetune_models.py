"""The public-shape fine-tuning builder and the published recipes' steps (benchmarks/models/hf_finetune.py,
litgpt_step.py, peft_metamath_step.py), cut to one decoder layer, held against the CPU allocator; and a
Hugging Face Llama under --fsdp (its causal mask reads a CPU tensor under FakeTensorMode)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from memtrace.tracer.core.parallel import Parallel
from memtrace.tracer.core.specs import parse_input, parse_optimizer
from memtrace.tracer.real.measure import measure_request
from memtrace.tracer.simulate import Config, Request, run_recorded

pytest.importorskip("peft")
pytest.importorskip("transformers")

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
BUILDER = f"{MODELS / 'hf_finetune.py'}:build"
QV = "q_proj,v_proj"
CASES = [
    (  # litgpt's phi-1.5 LoRA: fused GELU, bf16 adapters with dropout, the head and loss in chunks
        {"shape": "phi-1.5", "act": "gelu_pytorch_tanh", "targets": QV, "dropout": 0.05},
        {"adapter_dtype": "bfloat16"},
        "litgpt_step.py",
    ),
    (  # PEFT's MetaMathQA LoRA: Llama-3.2-3B (tied embeddings), fp32 adapters, clipping
        {"shape": "llama3.2-3b", "targets": QV, "rank": 32, "alpha": 64},
        {},
        "peft_metamath_step.py",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=["litgpt-phi", "peft-metamath-llama"])
def test_published_recipes_match_the_cpu_allocator(case: tuple[dict[str, Any], dict[str, Any], str]) -> None:
    builder, extra, step = case
    config = Config(optimizer=parse_optimizer("adamw"), device="cpu", step=f"{MODELS / step}:step")
    inputs = (parse_input("input_ids=2x160:int64"), parse_input("labels=2x160:int64"))
    kwargs = tuple({**builder, **extra, "layers": 1}.items())
    request = Request(BUILDER, inputs, kwargs, config)
    simulated = run_recorded(request).result.peak.bytes
    measured = measure_request(request).peak
    assert abs(simulated - measured) <= 0.01 * measured, (simulated, measured)


def test_hf_llama_runs_under_fsdp() -> None:
    builder = f"{MODELS / 'hf_llama.py'}:build"
    parallel = Parallel("fsdp", 8, wrap=("model.layers.*",))
    config = Config(optimizer=parse_optimizer("adamw"), device="cuda", parallel=parallel)
    request = Request(builder, (parse_input("input_ids=1x64:int64"),), (("layers", 1),), config)
    sharded = run_recorded(request).result.peak.bytes
    whole = run_recorded(
        Request(builder, request.inputs, request.builder_kwargs, Config(optimizer=config.optimizer))
    ).result.peak.bytes
    assert 0 < sharded < whole
