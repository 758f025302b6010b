"""bfloat16/float16 CPU matrix multiplies against the allocator: one op on real tensors under the profiler,
the same op's rule replayed by the recorder on meta tensors; the peak rise during the op must agree.

The rise is the output plus oneDNN's scratchpad (and any operand copy), which depends on the shape, the
operands' layouts, the sum post-op (`addmm`, `baddbmm`) and the number of threads. The model ports oneDNN's
brgemm heuristics for AMX-BF16, AVX512-BF16 and AVX512-FP16 CPUs; elsewhere the oneDNN cases are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from reference import measured_op_rise, predicted_op_rise

from memtrace.tracer.rules_lowp import gemm_workspace, modelled

TOLERANCE = 0.005


@dataclass(frozen=True)
class Case:
    name: str
    op: str  # mm | addmm | bmm | baddbmm
    m: int
    k: int
    n: int
    batch: int = 0
    a: str = ""  # "t": the first operand is a transposed view, "s": its rows are padded (a sliced view)
    b: str = ""
    threads: int = 2


CASES = [
    # the zoo transformers' GEMMs under autocast (4x64 tokens, width 128, MLP 512, vocabulary 1000)
    Case("qkv-forward", "addmm", 256, 128, 384, b="t"),
    Case("mlp-up-forward", "addmm", 256, 128, 512, b="t"),
    Case("mlp-down-forward", "addmm", 256, 512, 128, b="t"),
    Case("head-forward", "addmm", 256, 128, 1000, b="t"),
    Case("head-grad-input", "mm", 256, 1000, 128),
    Case("head-grad-weight", "mm", 1000, 256, 128, a="t"),
    Case("mlp-grad-weight", "mm", 512, 256, 128, a="t"),
    Case("tied-head-forward", "mm", 256, 128, 500, b="t"),
    # shapes and layouts
    Case("square", "mm", 512, 512, 512),
    Case("both-transposed", "mm", 300, 200, 100, a="t", b="t"),
    Case("odd-k", "mm", 200, 63, 300),
    Case("odd-everything", "addmm", 129, 97, 61, a="t"),
    Case("long-k", "mm", 64, 4096, 256),
    Case("wide-n", "addmm", 96, 256, 3000, b="t"),
    Case("tall-m", "mm", 3000, 64, 96),
    Case("skinny-n", "mm", 1024, 128, 8),
    Case("vector-m", "mm", 1, 512, 1024),
    Case("padded-rows", "addmm", 250, 130, 70, a="s", b="ts"),
    Case("tiny-no-onednn", "mm", 16, 16, 16),
    Case("tiny-amx-declines", "mm", 200, 63, 1, a="t", b="t", threads=8),
    # threads: oneDNN sizes per-thread buffers for torch.get_num_threads() threads
    Case("one-thread", "addmm", 256, 512, 128, b="t", threads=1),
    Case("three-threads", "mm", 256, 1000, 128, threads=3),
    Case("four-threads", "mm", 1000, 256, 128, a="t", threads=4),
    # batched
    Case("bmm", "bmm", 64, 32, 64, batch=16),
    Case("bmm-transposed", "bmm", 64, 64, 32, batch=16, a="t"),
    Case("bmm-transposed-b", "bmm", 128, 48, 96, batch=4, b="t", threads=3),
    Case("bmm-copied-operand", "bmm", 100, 40, 60, batch=3, b="s"),
    Case("baddbmm", "baddbmm", 96, 80, 72, batch=8, a="t"),
]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _operand(shape: tuple[int, ...], layout: str, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    pad = 3 if "s" in layout else 0
    if "t" in layout:
        full = (*shape[:-2], shape[-1], shape[-2] + pad)
        return torch.randn(full, generator=gen).to(dtype)[..., : shape[-2]].transpose(-1, -2)
    return torch.randn((*shape[:-1], shape[-1] + pad), generator=gen).to(dtype)[..., : shape[-1]]


def _op(case: Case, dtype: torch.dtype) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    gen = torch.Generator().manual_seed(0)
    batch = (case.batch,) if case.batch else ()
    a = _operand((*batch, case.m, case.k), case.a, dtype, gen)
    b = _operand((*batch, case.k, case.n), case.b, dtype, gen)
    bias = torch.randn(case.n, generator=gen).to(dtype)
    if case.op == "mm":
        return torch.ops.aten.mm.default, (a, b)
    if case.op == "addmm":
        return torch.ops.aten.addmm.default, (bias, a, b)
    if case.op == "bmm":
        return torch.ops.aten.bmm.default, (a, b)
    return torch.ops.aten.baddbmm.default, (bias, a, b)


@contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rise_matches_the_allocator(case: Case, dtype: str) -> None:
    if not modelled(DTYPES[dtype]):
        pytest.skip(f"this CPU's oneDNN {dtype} GEMM kernels are not modelled")
    func, args = _op(case, DTYPES[dtype])
    with _threads(case.threads):
        measured = measured_op_rise(func, args)
        predicted = predicted_op_rise(func, args)
    error = (predicted - measured) / measured
    assert abs(error) <= TOLERANCE, (
        f"{case.name} {dtype}: predicted rise {predicted:,} vs measured {measured:,} ({error:+.3%})"
    )


def _steps(m: int, k: int, n: int, dtype: torch.dtype) -> list[str]:
    a = torch.empty(m, k, dtype=dtype, device="meta")
    b = torch.empty(k, n, dtype=dtype, device="meta")
    ws = gemm_workspace(a, b, torch.empty(m, n, dtype=dtype, device="meta"))
    return [] if ws is None else [s.kind for s in ws.steps]


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_scratchpad_only_where_onednn_runs(dtype: torch.dtype) -> None:
    """A scratchpad after the output, freed inside the op; none for tiny products or off oneDNN."""
    if not modelled(dtype):
        pytest.skip("this CPU's oneDNN GEMM kernels are not modelled")
    assert _steps(16, 16, 16, dtype) == []  # M*N*K <= 4096: ATen's own kernel
    if torch.backends.mkldnn.is_available():
        assert _steps(256, 128, 384, dtype) == ["output", "alloc", "free"]
    with torch.backends.mkldnn.flags(enabled=False):
        assert _steps(256, 128, 384, dtype) == []


def test_scratchpad_follows_the_thread_count() -> None:
    """oneDNN books per-thread buffers: the rule reads torch.get_num_threads() when it runs."""
    if not modelled(torch.bfloat16) or not torch.backends.mkldnn.is_available():
        pytest.skip("this CPU's oneDNN bf16 GEMM kernels are not modelled")
    a = torch.empty(1000, 256, dtype=torch.bfloat16, device="meta")
    b = torch.empty(256, 128, dtype=torch.bfloat16, device="meta")
    out = torch.empty(1000, 128, dtype=torch.bfloat16, device="meta")
    sizes = []
    for n in (1, 2, 4):
        with _threads(n):
            ws = gemm_workspace(a, b, out)
        assert ws is not None
        sizes.append(sum(s.nbytes for s in ws.steps if s.kind == "alloc"))
    assert sizes[0] < sizes[1] < sizes[2]
