"""Measure the 1080p seed CNN's training step on the real CPU allocator and compare with memtrace.

Needs about 11 GB of RAM and a minute or two on two cores; not run in CI.

    .venv/bin/python benchmarks/seed_1080p_reference.py [--optimizer adam]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks" / "models"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--h", type=int, default=1080)
    parser.add_argument("--w", type=int, default=1920)
    opts = parser.parse_args()

    import torch
    from reference import measure
    from seed_cnn import build

    from memtrace.tracer.core.specs import human_bytes, parse_optimizer
    from memtrace.tracer.simulate import simulate

    spec = f"1x3x{opts.h}x{opts.w}"
    t0 = time.perf_counter()
    result = simulate(
        build, [spec], builder_kwargs={"h": opts.h, "w": opts.w}, optimizer=opts.optimizer, device="cpu"
    )
    t1 = time.perf_counter()
    torch.manual_seed(0)
    model = build(opts.h, opts.w)
    x = torch.randn(1, 3, opts.h, opts.w)
    ref = measure(model, [x], "train", parse_optimizer(opts.optimizer))
    t2 = time.perf_counter()
    err = (result.peak_bytes - ref.peak) / ref.peak
    print(
        f"seed CNN {spec} {opts.optimizer}: predicted {result.peak_bytes:,} "
        f"({human_bytes(result.peak_bytes)}) "
        f"in {t1 - t0:.1f}s; CPU allocator {ref.peak:,} ({human_bytes(ref.peak)}) in {t2 - t1:.1f}s; "
        f"error {100 * err:+.4f}%"
    )


if __name__ == "__main__":
    main()
