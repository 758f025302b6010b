"""`memtrace verify` with the figures it does not compare itself, for the gen/, qlora/ and compile/ groups.

python benchmarks/gpu/side_measure.py verify MODEL FLAGS... --device cuda --json

Prints verify's JSON object with one more key, `side`:
- `simulated`: the simulation's `cuda.host_bytes` (an offloaded KV cache's layers in pinned host memory),
  `cuda.managed_bytes` (paged optimizer state in CUDA unified memory) and `cuda.compiled_range` (the range
  between inductor's CPU plan and the eager step), read off the Result verify computed (no second run);
- `measured`: the bytes bitsandbytes asked `cudaMallocManaged` for (`bitsandbytes.functional.get_paged`,
  counted where it is called for a real device) and the pinned host allocator's statistics
  (`torch.cuda.host_memory_stats()`: its allocated peak is what the offloaded cache held).
Off CUDA the measured side is empty (host and device are one), so the dry run shows the simulated side only.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from typing import Any


def _count_paged(counted: list[int]) -> None:
    try:
        import bitsandbytes.functional as bnbf
    except ImportError:
        return
    original = bnbf.get_paged

    def get_paged(*shape: int, dtype: Any = None, device: Any = None, **kw: Any) -> Any:
        import torch

        dtype = dtype or torch.float32
        out = original(*shape, dtype=dtype, **({"device": device} if device is not None else {}), **kw)
        if out.device.type == "cuda":
            n = 1
            for s in shape:
                n *= int(s)
            counted.append(n * dtype.itemsize)
        return out

    bnbf.get_paged = get_paged


def _simulated(result: Any) -> dict[str, Any]:
    cuda = getattr(result, "cuda", None)
    if cuda is None:
        return {}
    return {
        "host_bytes": cuda.host_bytes,
        "managed_bytes": cuda.managed_bytes,
        "compiled_range": cuda.compiled_range,
    }


def main(argv: list[str]) -> int:
    import torch

    import memtrace.tracer.simulate as simulate
    from memtrace.cli.main import main as cli

    results: list[Any] = []
    real_run = simulate.run

    def run(request: Any) -> Any:
        results.append(real_run(request))
        return results[-1]

    simulate.run = run  # cli/verify imports it at call time
    paged: list[int] = []
    _count_paged(paged)
    out = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out):
        try:
            cli(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
    text = out.getvalue()
    start = text.find("{")
    if start < 0:
        sys.stdout.write(text)
        return code or 1
    data = json.loads(text[start:])
    measured: dict[str, Any] = {}
    if torch.cuda.is_available():
        measured["managed_bytes"] = sum(paged)
        measured["paged_calls"] = len(paged)
        stats = getattr(torch.cuda, "host_memory_stats", None)  # torch 2.7 and later
        host = stats() if stats is not None else {}
        measured["host"] = {k: v for k, v in host.items() if "bytes" in k}
    data["side"] = {"simulated": _simulated(results[-1]) if results else {}, "measured": measured}
    print(json.dumps(data))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
