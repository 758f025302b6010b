"""The seed's two multipliers from memtrace's figures instead of guesses: the ~7B LLaVA answering one turn,
then two (the cache kept across turns), on an A100 40GB (docs/tutorial-vlm-serving.md shows it and its
output)."""

import memtrace
from memtrace.tracer.core.records import Category, Result
from memtrace.tracer.core.specs import human_bytes, parse_gpu
from memtrace.tracer.engine.recipes import Recipe

TURN_1 = ["input_ids=1x626:int64", "pixel_values=1x3x336x336"]  # 576 image tokens + a 50-token question
TURN_2 = ["input_ids_2=1x676:int64", "pixel_values_2=1x3x336x336"]  # another image + a 100-token question


def simulate(inputs: list[str]) -> Result:
    return memtrace.simulate(
        "benchmarks/models/hf_llava.py:seed",
        inputs,
        mode="generate",
        step="benchmarks/models/llava_turns.py:turns",
        recipe=Recipe(dtype="fp16"),
        device="cuda",
        gpu=parse_gpu("a100-40gb"),
    )


def beyond_weights(result: Result) -> int:
    """What the step adds to the weights at its peak: the KV cache, activations, logits, workspaces."""
    weights = result.peak.by_category[Category.PARAMETER] + result.peak.by_category.get(Category.BUFFER, 0)
    return result.peak_bytes - weights


one, two = simulate(TURN_1), simulate(TURN_1 + TURN_2)
rows = [
    ("KV cache at the peak", lambda r: r.peak.by_category[Category.KV_CACHE]),
    ("the step beyond the weights", beyond_weights),
    ("peak allocated, weights included", lambda r: r.peak_bytes),
]
print(f"{'':34}{'one turn':>14}{'two turns':>14}{'multiplier':>12}")
for name, figure in rows:
    a, b = figure(one), figure(two)
    print(f"{name:34}{human_bytes(a).split(' (')[0]:>14}{human_bytes(b).split(' (')[0]:>14}{b / a:>11.2f}x")
for label, result in (("one turn", one), ("two turns", two)):
    peak = result.peak
    print(f"{label}: peak in {peak.phase.value}, op {peak.op} in {peak.module}")
