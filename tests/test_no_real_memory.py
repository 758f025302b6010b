"""Tracing never allocates model-sized memory: the 1080p seed CNN (2.1 GB of weights, a 10+ GB step)
is built and simulated while the process's peak RSS grows by less than 300 MB."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import json, resource, sys
import torch
from memtrace.tracer.simulate import simulate
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
result = simulate(sys.argv[1], ["1x3x1080x1920"], builder_kwargs={"h": 1080, "w": 1920}, device="cpu")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"growth": after - before, "peak": result.peak_bytes,
                  "params": result.model.parameter_bytes}))
"""


def test_1080p_seed_cnn_simulates_without_real_memory() -> None:
    builder = str(REPO / "benchmarks" / "models" / "seed_cnn.py") + ":build"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, builder], capture_output=True, text=True, check=True)
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data["params"] > 2_000_000_000
    assert data["peak"] > 8_000_000_000
    assert data["growth"] < 300 * 10**6, f"peak RSS grew by {data['growth']:,} bytes"
