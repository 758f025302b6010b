"""torchao on meta: float8 training (`convert_to_float8_training`) held against the CPU allocator, through
ATen's emulated CPU `_scaled_mm` (devices/cpu/scaled_mm.py); what does not run is said in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_cli import run

from memtrace.tracer.core.specs import parse_input, parse_optimizer
from memtrace.tracer.real.measure import allocation_events, measure_request
from memtrace.tracer.simulate import Config, Request, run_recorded

pytest.importorskip("torchao")

TORCHAO = f"{Path(__file__).resolve().parents[1] / 'benchmarks' / 'models' / 'torchao_quant.py'}:build"


@pytest.mark.parametrize("mode", ["infer", "no_grad"])
def test_int8_weight_only_matches_the_cpu_allocator(mode: str) -> None:
    config = Config(optimizer=parse_optimizer("none"), device="cpu", mode=mode)
    request = Request(TORCHAO, (parse_input("64x256:bfloat16"),), (("scheme", "int8wo"),), config)
    run = run_recorded(request)
    measured = measure_request(request).peak
    assert abs(run.result.peak.bytes - measured) <= 0.01 * measured, (run.result.peak.bytes, measured)
    weights = sum(s.nbytes for s in run.trace.storages.values() if s.category.value == "parameter")
    assert weights < 256 * 1024 * 4 * 2  # int8 data and scales, not the bf16 weights (2 bytes each)


def test_int4_weight_only_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        from torchao.quantization import Int4WeightOnlyConfig, quantize_

        quantize_(
            torch.nn.Sequential(torch.nn.Linear(256, 256, dtype=torch.bfloat16)), Int4WeightOnlyConfig()
        )
    except Exception:
        pass
    else:
        pytest.skip("torchao's int4 weight-only runs here (its CUDA kernels are installed)")
    args = ("--arg", "scheme=int4wo", "--input", "64x256:bfloat16", "--mode", "infer", "--device", "cpu")
    code, _, err = run(capsys, TORCHAO, *args)
    errors = [line for line in err.splitlines() if line.startswith("memtrace: error")]
    assert code == 2 and len(errors) == 1 and "Int4WeightOnlyConfig) is not supported" in errors[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_float8_training_matches_the_cpu_allocator(dtype: str) -> None:
    config = Config(optimizer=parse_optimizer("adamw"), device="cpu")
    builder = (("scheme", "float8"), ("dtype", dtype), ("hidden", 128))
    request = Request(TORCHAO, (parse_input(f"96x128:{dtype}"),), builder, config)
    simulated = run_recorded(request).result.peak.bytes
    measured = measure_request(request).peak
    assert abs(simulated - measured) <= 0.01 * measured, (simulated, measured)


def _signed(steps: list[tuple[str, int, int]], output: int) -> list[int]:
    """A workspace's steps as the allocator's signed sizes (the output's allocation included)."""
    sizes: dict[int, int] = {}
    signed = []
    for kind, key, nbytes in steps:
        if kind == "alloc":
            sizes[key] = nbytes
            signed.append(nbytes)
        elif kind == "output":
            signed.append(output)
        elif kind == "free":
            signed.append(-sizes.pop(key))
    return signed + [-n for n in reversed(sizes.values())]


CASES = [  # (M, K, N, out dtype, a column-major, b column-major)
    (64, 256, 1024, torch.float32, False, True),
    (64, 256, 1024, torch.bfloat16, False, True),
    (64, 256, 1024, torch.float32, True, True),
    (48, 80, 112, torch.float32, False, False),
    (16, 16, 16, torch.bfloat16, False, True),  # under 60 x 60: no transpose buffer
]


@pytest.mark.parametrize("case", CASES, ids=[f"{m}x{k}x{n}-{d}-{a}{b}" for m, k, n, d, a, b in CASES])
def test_cpu_scaled_mm_buffers_are_the_kernels(case: tuple[int, int, int, torch.dtype, bool, bool]) -> None:
    from torch.profiler import ProfilerActivity, profile

    from memtrace.tracer.devices.cpu.scaled_mm import scaled_mm_cpu

    m, k, n, dtype, a_col, b_col = case
    fp8 = torch.float8_e4m3fn
    a = torch.randn(k, m).to(fp8).t() if a_col else torch.randn(m, k).to(fp8)
    b = torch.randn(n, k).to(fp8).t() if b_col else torch.randn(k, n).to(fp8)
    kwargs = {"scale_a": torch.tensor(1.0), "scale_b": torch.tensor(2.0), "out_dtype": dtype}
    torch._scaled_mm(a, b, **kwargs)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = torch._scaled_mm(a, b, **kwargs)
    measured = [size for _, size, _ in allocation_events(prof)]
    ws = scaled_mm_cpu((a, b), kwargs, out)
    assert ws is not None
    steps = [(s.kind, s.key, s.nbytes) for s in ws.steps]
    assert _signed(steps, out.numel() * out.element_size()) == measured  # the output outlives the op
