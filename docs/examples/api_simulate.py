"""The Python API in a few lines: simulate a step, read the result (docs/api.md shows it and its output)."""

import memtrace
from memtrace.tracer.core.specs import human_bytes, parse_gpu
from memtrace.tracer.engine.recipes import Recipe

result = memtrace.simulate(
    "benchmarks/models/seed_cnn.py:build",
    ["64x3x144x256"],
    optimizer="sgd:momentum=0.9",
    device="cuda",
    gpu=parse_gpu("rtx4070"),
    recipe=Recipe(amp="bf16", accumulate=2),
    loss="ce",
)
print("peak", human_bytes(result.peak_bytes), "in", result.peak.phase.value, "at", result.peak.op)
for category, nbytes in result.peak.by_category.items():
    print(f"  {category.value:16} {human_bytes(nbytes)}")
assert result.cuda is not None  # --device cuda: the caching allocator's figures
print("reserved", human_bytes(result.cuda.reserved_peak_bytes))
print("effective batch", result.effective_batch, "fits rtx4070:", result.verdict and result.verdict.fits)
print("JSON keys:", ", ".join(sorted(result.to_json())[:8]), "...")
