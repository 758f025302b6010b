"""Compiled steps against the CPU allocator: each case simulated (eager and compiled) and run for real
(compiled with inductor's C++ backend, under torch.profiler's memory events, as `memtrace verify` measures);
prints the markdown table committed as benchmarks/results/compile-cpu.md. Minutes on 2 cores.

    .venv/bin/python benchmarks/compile_figures.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_compile as cases  # noqa: E402  (the tests' own models)

from memtrace.tracer.real.measure import Measured, measure_request  # noqa: E402
from memtrace.tracer.simulate import request, run  # noqa: E402


def _cases(models: Path) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    gpt = {"args": cases.SMALL_GPT, "optimizer": "adamw"}
    return {
        "conv-BN-ReLU CNN, --compile": (
            {"builder": f"{models}:cnn", "inputs": ("8x3x64x64",)},
            {"compile_model": True},
        ),
        "nanoGPT (own cross entropy), --compile": (
            {"builder": f"{ROOT}/benchmarks/models/nanogpt.py:build", "inputs": ("4x64:int64",) * 2, **gpt},
            {"compile_model": True},
        ),
        "MLP, builder's torch.compile, train": (
            {"builder": f"{models}:mlp", "inputs": ("64x256",), "args": {"compiled": False}},
            {"args": {"compiled": True}},
        ),
        "MLP, builder's torch.compile, infer": (
            {"builder": f"{models}:mlp", "inputs": ("64x256",), "args": {"compiled": False}, "mode": "infer"},
            {"args": {"compiled": True}},
        ),
    }


def main() -> None:
    models = Path(tempfile.mkdtemp()) / "compiled_models.py"
    models.write_text(cases.CODE)
    print("| case | eager simulated | compiled simulated | compiled measured | error | compiled vs eager |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, (base, change) in _cases(models).items():
        builder, inputs = base.pop("builder"), base.pop("inputs")
        eager = run(request(builder, inputs, device="cpu", **base)).peak_bytes
        req = request(builder, inputs, device="cpu", **{**base, **change})
        sim = run(req).peak_bytes
        real = measure_request(req)
        assert isinstance(real, Measured)
        error = (sim - real.peak) / real.peak
        saved = (real.peak - eager) / eager
        print(f"| {name} | {eager:,} | {sim:,} | {real.peak:,} | {error:+.4%} | {saved:+.1%} |", flush=True)


if __name__ == "__main__":
    main()
