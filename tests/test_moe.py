"""Mixture-of-experts LMs (HF Mixtral, Qwen2-MoE) against the CPU allocator, routed by the assumption policy.

The reference trains the real model on CPU tensors with fixed seeds and counts the tokens each expert took in
the measured step; memtrace, given those counts with `--assume moe.tokens=...`, must match the allocator
within 1%; with its default routing (balanced) it must bound the measurement from above, within 2x.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from reference import measure

from memtrace.tracer.core.records import Result
from memtrace.tracer.core.specs import parse_input
from memtrace.tracer.engine.loader import make_inputs
from memtrace.tracer.engine.recipes import Recipe
from memtrace.tracer.simulate import Config, Request, run

pytest.importorskip("transformers")
MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
sys.path.insert(0, str(MODELS))
import hf_moe  # noqa: E402

SPEC = parse_input("input_ids=2x64:int64")
RECIPES = {"fp32": Recipe(), "amp-bf16": Recipe(amp="bf16"), "dtype-bf16": Recipe(dtype="bf16")}


def _reference(name: str, experts: str, recipe: Recipe) -> tuple[int, str]:
    """The measured CPU peak and the tokens each expert took in the measured step, per MoE layer."""
    torch.manual_seed(0)
    model = getattr(hf_moe, name)(experts=experts)
    counts: dict[str, list[int]] = {}

    def hook(module: Any, args: Any, out: Any, layer: str = "") -> None:
        counts[layer] = out[-1].flatten().bincount(minlength=module.num_experts).tolist()

    for layer, module in model.named_modules():
        if layer.endswith("mlp.gate"):
            module.register_forward_hook(lambda m, a, o, layer=layer: hook(m, a, o, layer))
    torch.manual_seed(1)
    ref = measure(model, make_inputs([SPEC], "cpu", ()), config=Config(device="cpu", recipe=recipe))
    return ref.peak, ";".join(",".join(map(str, c)) for c in counts.values())


def _simulate(name: str, experts: str, recipe: Recipe, *assume: tuple[str, str]) -> Result:
    config = Config(device="cpu", recipe=recipe, assume=assume)
    return run(Request(str(MODELS / "hf_moe.py") + f":{name}", (SPEC,), (("experts", experts),), config))


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("experts", ["eager", "grouped_mm"])
@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_measured_routing_matches_the_allocator(name: str, experts: str, recipe: str) -> None:
    measured, tokens = _reference(name, experts, RECIPES[recipe])
    given = _simulate(name, experts, RECIPES[recipe], ("moe.tokens", tokens))
    assert abs(given.peak.bytes - measured) <= 0.01 * measured, (given.peak.bytes, measured, tokens)
    assert {a.source for a in given.assumptions if a.op == "topk"} == {"--assume"}
    default = _simulate(name, experts, RECIPES[recipe])
    assert measured <= default.peak.bytes <= 2 * measured, (default.peak.bytes, measured)
    assert any("balanced" in a.value for a in default.assumptions)


def test_worst_routing_sends_every_token_to_the_first_experts() -> None:
    result = _simulate("mixtral", "eager", Recipe(), ("moe.routing", "worst"))
    values = {a.value for a in result.assumptions if a.op == "topk"}
    assert values == {"worst: tokens per expert 128,128,0,0"}


def test_counts_that_do_not_fit_the_routing_are_refused() -> None:
    from memtrace.tracer.core.errors import MemtraceError

    with pytest.raises(MemtraceError, match="does not fit a routing of 128 tokens"):
        _simulate("mixtral", "eager", Recipe(), ("moe.tokens", "1,2,3,4"))


def test_llava_image_token_check_passes_by_the_policy() -> None:
    """A Llava-style VLM: the image-token count check is assumed to pass; the real run's inputs are made
    consistent (each row holds one image's placeholders), and the peaks agree within 1%."""
    import hf_llava

    from memtrace.tracer.engine.batch import Batch

    torch.manual_seed(0)
    model = hf_llava.build()
    ids = torch.randint(0, hf_llava.IMAGE_TOKEN, (2, 80))
    ids[:, 1 : 1 + hf_llava.image_tokens()] = hf_llava.IMAGE_TOKEN
    batch = Batch((), {"input_ids": ids, "pixel_values": torch.randn(2, 3, 32, 32)})
    measured = measure(model, batch, config=Config(device="cpu")).peak
    specs = (parse_input("input_ids=2x80:int64"), parse_input("pixel_values=2x3x32x32"))
    result = run(Request(str(MODELS / "hf_llava.py") + ":build", specs, (), Config(device="cpu")))
    assert abs(result.peak.bytes - measured) <= 0.01 * measured, (result.peak.bytes, measured)
    assert [(a.op, a.source) for a in result.assumptions] == [("item (bool)", "default")]
