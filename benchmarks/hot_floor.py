"""The floor under the hot path: the 70B-shaped step of `speed.py --hot-path` (two iterations of forward with
labels, backward, AdamW with foreach=False, zero_grad), on meta, bf16, batch 1x4096), run four ways, each in a
fresh process, CPU seconds of the two iterations (the build and the imports left out):

- `plain`: on meta with no dispatch mode (PyTorch's meta kernels, many of them Python decompositions);
- `mode`: under a dispatch mode that only runs each op (`func(*args, **kwargs)`);
- `cached`: under a dispatch mode that runs each op through memtrace's meta cache (`engine/meta_cache.py`),
  recording nothing;
- `memtrace`: `memtrace.simulate` of the same step on the cpu target, its whole call (the build on meta,
  the two iterations recorded, the analysis) less nothing.

`cached` is what any simulation that sees every op of the user's step through Python pays before it records
anything: the C++ to Python crossing of each dispatch, Hugging Face's forward, the autograd engine, the
optimizer's loop.

    .venv/bin/python benchmarks/hot_floor.py            # a table, best of 2 per way
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WAYS = ("plain", "mode", "cached", "memtrace")


def _step(way: str) -> float:
    import torch
    import transformers.masking_utils as masking
    from torch.utils._python_dispatch import TorchDispatchMode

    sys.path.insert(0, str(HERE / "models"))
    import llama70b

    from memtrace.tracer.engine.data_dependent import Resolver
    from memtrace.tracer.engine.meta_cache import MetaCache

    # transformers reads `position_ids` to find packed sequences (`.item()` on meta): memtrace answers it
    masking.find_packed_sequence_indices = lambda *a, **k: None  # type: ignore[attr-defined]
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("meta"):
        model = llama70b.build()
    torch.set_default_dtype(torch.float32)
    opt = torch.optim.AdamW(model.parameters(), foreach=False)
    ids = torch.zeros(1, 4096, dtype=torch.int64, device="meta")
    cache = MetaCache(Resolver.passes_through, lambda storage: False)

    class Bare(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            return func(*args, **(kwargs or {}))

    class Cached(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            return cache.run(func, args, kwargs, lambda: func(*args, **kwargs))

    mode = {"plain": None, "mode": Bare, "cached": Cached}[way]
    start = time.process_time()
    for _ in range(2):
        with mode() if mode is not None else torch.device("meta"):
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
    return time.process_time() - start


def _simulated() -> float:
    from memtrace.tracer.simulate import simulate

    start = time.process_time()
    simulate(
        str(HERE / "models" / "llama70b.py") + ":build",
        ["1x4096:int64"],
        optimizer="adamw:foreach=false",
        device="cpu",
        recipe=_bf16(),
    )
    return time.process_time() - start


def _bf16() -> Any:
    from memtrace.tracer.engine.recipes import Recipe

    return Recipe(dtype="bf16")


def child(way: str) -> None:
    import transformers.models.llama.modeling_llama  # noqa: F401

    import memtrace.tracer.simulate  # noqa: F401  (the imports, before the clock starts)

    seconds = _simulated() if way == "memtrace" else _step(way)
    print(json.dumps({"way": way, "cpu_s": seconds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.child:
        child(ns.child)
        return
    print(f"| way | CPU s (best of {ns.repeats}) |\n|---|---|")
    for way in WAYS:
        runs = []
        for _ in range(ns.repeats):
            cmd = [sys.executable, __file__, "--child", way]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1])["cpu_s"])
        print(f"| {way} | {min(runs):.2f} |", flush=True)


if __name__ == "__main__":
    main()
