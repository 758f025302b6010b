"""bfloat16/float16 CPU matrix multiplies against the allocator: one op on real tensors under the profiler,
the same op's rule replayed by the recorder on meta tensors; the peak rise during the op must agree.

The rise is the output plus oneDNN's scratchpad (and any operand copy), which depends on the shape, the
operands' layouts, the sum post-op (`addmm`, `baddbmm`) and the number of threads. The model ports oneDNN's
brgemm heuristics for AMX-BF16, AVX512-BF16 and AVX512-FP16 and its GEMM-based bf16 matmul (AVX-512 without
a bf16 brgemm); where PyTorch does not call oneDNN (AVX2, fp16 below AVX512-FP16, aarch64 without bf16) the
rise is the output alone, and is checked too. Where an unported oneDNN kernel would run, tests skip. Every
expectation follows this process's oneDNN ISA (`cpu_isa`, ONEDNN_MAX_CPU_ISA included) and the allocator.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from reference import measured_op_rise, predicted_op_rise

from memtrace.tracer.devices.cpu import isa as cpu_isa
from memtrace.tracer.devices.cpu.gemm_lowp import GEMM, gemm_workspace, host, modelled

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


def _onednn_runs(dtype: torch.dtype) -> bool:
    """PyTorch's mkldnn_bf16/fp16_device_check, from oneDNN's effective ISA (cpu_isa)."""
    h = host()
    return h is not None and (h.bf16_device if dtype == torch.bfloat16 else h.f16_device)


def _mm_rises(m: int, k: int, n: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(measured, predicted, output bytes) of a real `mm` on this machine."""
    gen = torch.Generator().manual_seed(0)
    args = (torch.randn(m, k, generator=gen).to(dtype), torch.randn(k, n, generator=gen).to(dtype))
    func = torch.ops.aten.mm.default
    return measured_op_rise(func, args), predicted_op_rise(func, args), m * n * 2


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_scratchpad_only_where_onednn_runs(dtype: torch.dtype) -> None:
    """A scratchpad after the output, freed inside the op, exactly where this machine's oneDNN runs the
    GEMM (and the allocator sees one); none for tiny products or with oneDNN off."""
    if not modelled(dtype):
        pytest.skip("this CPU's oneDNN GEMM kernels are not modelled")
    assert _steps(16, 16, 16, dtype) == []  # M*N*K <= 4096: ATen's own kernel
    runs = _onednn_runs(dtype)
    assert _steps(256, 128, 384, dtype) == (["output", "alloc", "free"] if runs else [])
    measured, predicted, output = _mm_rises(256, 128, 384, dtype)
    assert predicted == measured, f"predicted {predicted:,} vs measured {measured:,}"
    assert (measured > output) == runs, f"measured {measured:,}, output {output:,}, oneDNN runs: {runs}"
    with torch.backends.mkldnn.flags(enabled=False):
        assert _steps(256, 128, 384, dtype) == []
        assert _mm_rises(256, 128, 384, dtype)[:2] == (output, output)


def test_scratchpad_follows_the_thread_count() -> None:
    """oneDNN books per-thread buffers: the rule reads torch.get_num_threads() when it runs, and agrees
    with the allocator at each count; brgemm's packed B buffers grow with the threads."""
    if not modelled(torch.bfloat16) or not _onednn_runs(torch.bfloat16):
        pytest.skip("no modelled oneDNN bf16 GEMM runs on this machine")
    a = torch.empty(1000, 256, dtype=torch.bfloat16, device="meta")
    b = torch.empty(256, 128, dtype=torch.bfloat16, device="meta")
    out = torch.empty(1000, 128, dtype=torch.bfloat16, device="meta")
    sizes = []
    for n in (1, 2, 4):
        with _threads(n):
            ws = gemm_workspace(a, b, out)
            measured, predicted, output = _mm_rises(1000, 256, 128, torch.bfloat16)
        assert ws is not None
        sizes.append(sum(s.nbytes for s in ws.steps if s.kind == "alloc"))
        assert measured == predicted == output + sizes[-1], (n, measured, predicted, output + sizes[-1])
    h = host()
    assert h is not None
    if h.bf16_isas[0] == GEMM:  # gemm_bf16_matmul_t: an f32 copy of the output, split over the threads
        assert sizes == [4 * 1000 * 128 + 128] * 3
    else:
        assert sizes[0] < sizes[1] < sizes[2]


_VERBOSE_NAMES = {
    "Intel AVX10.2 and Intel AMX with float8, float16, bfloat16 and 8-bit integer support": "avx10_2_amx_2",
    "Intel AVX10.2": "avx10_2",
    "Intel AVX10.1 and Intel AMX with bfloat16, float16 and 8-bit integer support": "avx512_core_amx_fp16",
    "Intel AVX10.1 and Intel AMX with bfloat16 and 8-bit integer support": "avx512_core_amx",
    "Intel AVX 10.1": "avx512_core_fp16",
    "Intel AVX-512 with Intel DL Boost and bfloat16 support": "avx512_core_bf16",
    "Intel AVX-512 with Intel DL Boost": "avx512_core_vnni",
    "Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions": "avx512_core",
    "Intel AVX2 with Intel DL Boost, float16 and bfloat16 support": "avx2_vnni_2",
    "Intel AVX2 with Intel DL Boost": "avx2_vnni",
    "Intel AVX2": "avx2",
    "Intel AVX": "avx",
    "Intel SSE4.1": "sse41",
}
_PROBE = """
import torch
from memtrace.tracer.devices.cpu import isa as cpu_isa
torch.nn.functional.conv2d(torch.randn(2, 16, 8, 8), torch.randn(16, 16, 3, 3))
print("simulated:" + cpu_isa.onednn_isa())
"""


@pytest.mark.parametrize("cap", [None, "AVX2", "SSE41", "AVX512_CORE", "avx512_core_bf16", "AVX512_CORE_AMX"])
def test_effective_isa_is_onednns(cap: str | None) -> None:
    """The ISA the rules assume is the one oneDNN reports (ONEDNN_VERBOSE) in a process with the same
    environment, under each ONEDNN_MAX_CPU_ISA cap."""
    if not cpu_isa.is_x86() or not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN's x86 ISAs do not apply here")
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    if cap is None:
        env.update({k: v for k, v in os.environ.items() if k in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")})
    else:
        env["ONEDNN_MAX_CPU_ISA"] = cap
    env["ONEDNN_VERBOSE"] = "1"
    run = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    reported = [line.split("isa:", 1)[1] for line in run.stdout.splitlines() if ",isa:" in line]
    simulated = [line.split(":", 1)[1] for line in run.stdout.splitlines() if line.startswith("simulated:")]
    assert reported and simulated, run.stdout[-2000:]
    assert _VERBOSE_NAMES[reported[0].strip()] == simulated[0]


_AVX512 = {"avx2", "avx", "sse4_1", "f16c", "avx512_f", "avx512_bw", "avx512_vl", "avx512_dq"}
_CPUS = {
    "zen3": {"avx2", "avx", "sse4_1", "f16c"},
    "cascade-lake": _AVX512 | {"avx512_vnni"},
    "zen4": _AVX512 | {"avx512_vnni", "avx512_bf16"},
    "sapphire-rapids": _AVX512
    | {"avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"},
}
# (cpu, ONEDNN_MAX_CPU_ISA) -> (effective ISA, bf16 implementations, bf16 on oneDNN, fp16 implementations,
# fp16 on oneDNN), as oneDNN v3.12's mayiuse/get_effective_cpu_isa and ideep's has_*_type_support decide
_DECISIONS = {
    ("zen3", ""): ("avx2", (), False, (), False),
    ("zen4", ""): ("avx512_core_bf16", ("avx512_core_bf16", GEMM), True, (), False),
    ("zen4", "AVX512_CORE"): ("avx512_core", (GEMM,), True, (), False),
    ("zen4", "avx2"): ("avx2", (), False, (), False),
    ("cascade-lake", ""): ("avx512_core_vnni", (GEMM,), True, (), False),
    ("sapphire-rapids", ""): (
        "avx512_core_amx", ("avx512_core_amx", "avx512_core_bf16", GEMM), True, ("avx512_core_fp16",), True,
    ),
    ("sapphire-rapids", "AVX512_CORE_FP16"): (
        "avx512_core_fp16", ("avx512_core_bf16", GEMM), True, ("avx512_core_fp16",), True,
    ),
    ("sapphire-rapids", "AVX512_CORE_BF16"): (
        "avx512_core_bf16", ("avx512_core_bf16", GEMM), True, (), False,
    ),
    ("sapphire-rapids", "AVX512_CORE"): ("avx512_core", (GEMM,), True, (), False),
    ("sapphire-rapids", "AVX2"): ("avx2", (), False, (), False),
}  # fmt: skip


def _clear() -> None:
    for f in (cpu_isa.onednn_cap, cpu_isa.mayiuse, cpu_isa.onednn_isa, host):
        f.cache_clear()


@pytest.mark.parametrize("key", list(_DECISIONS), ids=[f"{c}-{cap or 'default'}" for c, cap in _DECISIONS])
def test_isa_decision_on_other_cpus(key: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The one ISA decision the rules share, for CPUs this machine may not be (features stubbed)."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN")
    cpu, cap = key
    monkeypatch.setattr(cpu_isa, "is_x86", lambda: True)
    monkeypatch.setattr(cpu_isa, "cpu_features", lambda: frozenset(_CPUS[cpu]))
    monkeypatch.setattr(cpu_isa, "_amx_permitted", lambda: True)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    _clear()
    try:
        h = host()
        assert h is not None
        got = (cpu_isa.onednn_isa(), h.bf16_isas, h.bf16_device, h.f16_isas, h.f16_device)
    finally:
        monkeypatch.undo()
        _clear()
    assert got == _DECISIONS[key]
