"""The seed's multi-turn VLM, small: a Llava-style model (benchmarks/models/hf_llava.py) answering two turns,
each an image and a question, the KV cache kept across turns (benchmarks/models/llava_turns.py, a `--step`
under `--mode generate`). The simulated peak of one turn and of two is held against the CPU allocator, and the
cache of two turns is the cache of both turns' tokens."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from reference import measure

from memtrace.tracer.core.records import Category, Phase
from memtrace.tracer.engine.batch import Batch
from memtrace.tracer.simulate import request, run

pytest.importorskip("transformers")

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
sys.path.insert(0, str(MODELS))
import hf_llava  # noqa: E402

STEP = f"{MODELS / 'llava_turns.py'}:turns"
TURNS = (40, 30)  # the tokens of each turn: one image's placeholders and the question


def _turn_inputs(turns: int) -> tuple[list[str], Batch]:
    """The named inputs of `turns` turns, as specs for the simulation and as a consistent real batch (each
    turn's ids hold its image's placeholders, which the model checks)."""
    specs: list[str] = []
    real: dict[str, torch.Tensor] = {}
    for i, length in enumerate(TURNS[:turns]):
        suffix = f"_{i + 1}" if i else ""
        ids = torch.randint(0, hf_llava.IMAGE_TOKEN, (1, length))
        ids[:, 1 : 1 + hf_llava.image_tokens()] = hf_llava.IMAGE_TOKEN
        real[f"input_ids{suffix}"], real[f"pixel_values{suffix}"] = ids, torch.randn(1, 3, 32, 32)
        specs += [f"input_ids{suffix}=1x{length}:int64", f"pixel_values{suffix}=1x3x32x32"]
    return specs, Batch((), real)


@pytest.mark.parametrize("turns", [1, 2])
def test_the_turns_against_the_cpu_allocator(turns: int) -> None:
    torch.manual_seed(0)
    specs, batch = _turn_inputs(turns)
    req = request(f"{MODELS / 'hf_llava.py'}:build", specs, mode="generate", device="cpu", step=STEP)
    result = run(req)
    model = hf_llava.build().eval()
    config = req.config
    measured = measure(model, batch, config=config).peak
    assert result.peak_bytes == pytest.approx(measured, rel=0.01), (result.peak_bytes, measured)
    # at the peak (in the last turn's last layers) the cache holds every turn's tokens: per token, each
    # layer's keys and values of the model's width, in fp32
    text = model.config.text_config
    per_token = text.num_hidden_layers * 2 * text.hidden_size * 4
    assert result.peak.by_category[Category.KV_CACHE] == per_token * sum(TURNS[:turns])
    print(f"{turns} turn(s): simulated {result.peak_bytes}, CPU allocator {measured}")
    phases = {p.phase for p in result.phases}
    assert Phase.PREFILL in phases and (Phase.DECODE in phases) == (turns == 2)
