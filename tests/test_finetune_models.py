"""A Hugging Face Llama under --fsdp: its causal mask reads a CPU tensor under FakeTensorMode."""

from __future__ import annotations

from pathlib import Path

import pytest

from memtrace.tracer.core.parallel import Parallel
from memtrace.tracer.core.specs import parse_input, parse_optimizer
from memtrace.tracer.simulate import Config, Request, run_recorded

pytest.importorskip("transformers")

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"


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
