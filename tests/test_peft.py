"""PEFT held against the CPU allocator: adapters on bf16 weights (LoRA, DoRA with its weight-norm
temporaries), `modules_to_save` with an adapter on the embeddings, several adapters active at once; the
QLoRA variants are in test_bnb.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from memtrace.tracer.core.specs import parse_input, parse_optimizer
from memtrace.tracer.real.measure import measure_request
from memtrace.tracer.simulate import Config, Request, run_recorded

pytest.importorskip("peft")
pytest.importorskip("transformers")
pytest.importorskip("bitsandbytes")  # prepare_model_for_kbit_training and the builder's config import it

LORA = f"{Path(__file__).resolve().parents[1] / 'benchmarks' / 'models' / 'hf_qlora.py'}:build"


@pytest.mark.parametrize(
    "builder",
    [
        {"quant": "none", "kbit": False},
        {"quant": "none", "kbit": False, "dora": True},
        {"quant": "nf4", "save": "lm_head", "embed": True},
        {"quant": "nf4", "adapters": 2},
    ],
    ids=["lora", "dora", "modules-to-save-and-embedding", "two-adapters"],
)
def test_adapters_on_bf16_weights_match_the_cpu_allocator(builder: dict[str, Any]) -> None:
    config = Config(optimizer=parse_optimizer("adamw"), device="cpu")
    request = Request(LORA, (parse_input("input_ids=2x64:int64"),), tuple(builder.items()), config)
    simulated = run_recorded(request).result.peak.bytes
    measured = measure_request(request).peak
    assert abs(simulated - measured) <= 0.01 * measured, (simulated, measured)
