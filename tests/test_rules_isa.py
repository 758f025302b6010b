"""CPU rules on an ISA this machine may not have, held against allocator events recorded on one that has it.

Each file in tests/data/cpu-avx512-bf16/ is one steady-state step recorded on an AVX-512-BF16 CPU without
AMX (its flags, ATen capability and thread count inside). The step is simulated here with the ISA forced to
that machine's (`forced_isa`: the CPU features oneDNN's `mayiuse` sees, ATen's capability, the threads) and
its largest rise is held against the recorded events' largest rise. Where this machine has that ISA, the
live tests (test_rules_cpu.py, test_cpu_sdpa_choice.py) cover the same kernels on the real allocator.

`gemms/` holds the GEMMs of a compiled step (benchmarks/record_cpu_gemms.py): inductor's wrapper calls
`extern_kernels.mm(a, b, out=buf)`, and each call's oneDNN scratchpad is held against the one recorded, with
the recording machine's ISA, threads and caches (the oneDNN blocking reads the L2 size).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from reference import event_sizes, largest_rise, workspace_sizes

from memtrace.tracer import simulate as sim
from memtrace.tracer.devices.cpu import conv_onednn, gemm_lowp
from memtrace.tracer.devices.cpu import isa as cpu_isa
from memtrace.tracer.engine.device_model import DeviceModel
from memtrace.tracer.engine.recorder import Recorder

DATA = Path(__file__).parent / "data" / "cpu-avx512-bf16"
ROOT = Path(__file__).parent.parent
TOLERANCE = 0.005
_FLAGS = {"avx512f": "avx512_f", "avx512bw": "avx512_bw", "avx512vl": "avx512_vl", "avx512dq": "avx512_dq"}
_GEMM_OPS = {"aten::mm": torch.ops.aten.mm, "aten::addmm": torch.ops.aten.addmm}
_CACHED = (cpu_isa.mayiuse, cpu_isa.onednn_isa, conv_onednn.channel_block, gemm_lowp.host)

KNOWN_GAPS: dict[str, str] = {}  # recorded cases a rule is known to miss (a strict xfail each)


@contextmanager
def forced_isa(machine: dict[str, Any]) -> Iterator[None]:
    """Simulate as on `machine` (a recording's "machine"): its CPU flags, ATen capability and threads."""
    features = frozenset(_FLAGS.get(f, f) for f in machine["cpu_flags"])
    saved = (cpu_isa.cpu_features, cpu_isa.aten_capability, torch.get_num_threads())
    cpu_isa.cpu_features = lambda: features  # type: ignore[assignment]
    cpu_isa.aten_capability = lambda: str(machine["cpu_capability"])
    torch.set_num_threads(int(machine["threads"]))
    for f in _CACHED:
        f.cache_clear()
    try:
        yield
    finally:
        cpu_isa.cpu_features, cpu_isa.aten_capability = saved[0], saved[1]  # type: ignore[assignment]
        torch.set_num_threads(saved[2])
        for f in _CACHED:
            f.cache_clear()


def _simulated_rise(rec: dict[str, Any]) -> int:
    loss = None if rec["loss"] in (None, "sum") else rec["loss"]
    req = sim.request(
        str(ROOT / rec["model"]), rec["inputs"], mode=rec["mode"], device="cpu", amp=rec["amp"], loss=loss
    )
    events = sim.run_recorded(req).trace.events
    last = max(e.iteration for e in events)
    step = [e for e in events if e.iteration == last]
    return largest_rise(event_sizes(step))


CASES = [
    pytest.param(p.stem, marks=pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[p.stem]))
    if p.stem in KNOWN_GAPS
    else p.stem
    for p in sorted(DATA.glob("*.json"))
]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not built in")
@pytest.mark.parametrize("case", CASES)
def test_step_rise_matches_the_recorded_events(case: str) -> None:
    rec = json.loads((DATA / f"{case}.json").read_text())
    with forced_isa(rec["machine"]):
        assert cpu_isa.onednn_isa() == "avx512_core_bf16"
        predicted = _simulated_rise(rec)
    measured = largest_rise([size for _, size, _ in rec["events"]])
    assert abs(predicted - measured) <= TOLERANCE * measured, f"{case}: {predicted:,} vs {measured:,}"


def test_forcing_the_isa_is_undone() -> None:
    before = cpu_isa.onednn_isa()
    with forced_isa({"cpu_flags": ["avx2"], "cpu_capability": "AVX2", "threads": 1}):
        assert cpu_isa.onednn_isa() == "avx2"
    assert cpu_isa.onednn_isa() == before


def _meta(arg: dict[str, Any]) -> torch.Tensor:
    dtype = getattr(torch, arg["dtype"].removeprefix("torch."))
    return torch.empty_strided(arg["sizes"], arg["strides"], dtype=dtype, device="meta")


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not built in")
@pytest.mark.skipif(not cpu_isa.is_x86(), reason="x86-64 ISAs cannot be forced on another architecture")
@pytest.mark.parametrize("case", sorted(p.stem for p in (DATA / "gemms").glob("*.json")))
def test_a_compiled_steps_out_gemms_book_the_recorded_scratchpads(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiled bf16 llama's 45 `mm(out=)` calls: each one's allocations inside the op as recorded
    (without a rule for the `out=` overload none was predicted, and the compiled step was 4.4% low)."""
    rec = json.loads((DATA / "gemms" / f"{case}.json").read_text())
    machine = rec["machine"]
    monkeypatch.setattr(gemm_lowp, "_cache_sizes", lambda: dict(machine["caches"]))
    device = DeviceModel("cpu")
    with forced_isa(machine):
        assert cpu_isa.onednn_isa() == "avx512_core_bf16"
        for i, gemm in enumerate(rec["gemms"]):
            *operands, buf = (_meta(a) for a in gemm["args"])
            op = _GEMM_OPS[gemm["op"]].out
            predicted = workspace_sizes(device.workspace(op, tuple(operands), {"out": buf}, buf))
            assert predicted == gemm["events"], f"{case} #{i}: {gemm['args']}"


def _conv_backward_events(case: dict[str, Any]) -> list[int]:
    """One recorded `convolution_backward` call replayed by the CPU rules on meta tensors."""
    n, c, h, w = case["input"]
    o, k, s, p, d = (case[key] for key in ("out_channels", "kernel", "stride", "padding", "dilation"))
    x = torch.empty(n, c, h, w, dtype=torch.bfloat16, device="meta")
    wt = torch.empty(o, c, k, k, dtype=torch.bfloat16, device="meta")
    geometry = ([s, s], [p, p], [d, d], False, [0, 0], 1)
    gy = torch.ops.aten.convolution(x, wt, None, *geometry)
    args = (gy, x, wt, [o] if case["bias"] else None, *geometry, [bool(m) for m in case["mask"]])
    out = torch.ops.aten.convolution_backward.default(*args)
    rec = Recorder(DeviceModel("cpu"))
    rec.on_op(torch.ops.aten.convolution_backward.default, args, {}, out)
    return event_sizes(rec.events)


_CONV_BF16 = json.loads((DATA / "ops" / "conv_bf16_backward.json").read_text())
_CONV_ID = "o{out_channels}k{kernel}s{stride}p{padding}d{dilation}-t{threads}"


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not built in")
@pytest.mark.skipif(not cpu_isa.is_x86(), reason="oneDNN's x86 kernels cannot be forced off x86")
@pytest.mark.parametrize(
    "case",
    _CONV_BF16["cases"],
    ids=lambda c: "n{}c{}h{}w{}-".format(*c["input"]) + _CONV_ID.format(**c),
)
def test_bf16_conv_backward_matches_the_recorded_events(case: dict[str, Any]) -> None:
    """oneDNN's AVX-512-BF16 backward kernels (direct, brgconv_strided) and their scratchpads, event for
    event, as recorded by benchmarks/record_conv_bf16.py."""
    with forced_isa({**_CONV_BF16["machine"], "threads": case["threads"]}):
        assert cpu_isa.onednn_isa() == "avx512_core_bf16"
        assert _conv_backward_events(case) == case["events"]


def _conv_forward_events(case: dict[str, Any]) -> list[int]:
    """One recorded 1x1 `convolution` call replayed by the CPU rules on meta tensors."""
    n, c, h, w = case["input"]
    s = case["stride"]
    x = torch.empty(n, c, h, w, dtype=torch.bfloat16, device="meta")
    wt = torch.empty(case["out_channels"], c, 1, 1, dtype=torch.bfloat16, device="meta")
    args = (x, wt, None, [s, s], [0, 0], [1, 1], False, [0, 0], 1)
    out = torch.ops.aten.convolution.default(*args)
    rec = Recorder(DeviceModel("cpu"))
    rec.on_op(torch.ops.aten.convolution.default, args, {}, out)
    return event_sizes(rec.events)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not built in")
@pytest.mark.skipif(not cpu_isa.is_x86(), reason="oneDNN's x86 kernels cannot be forced off x86")
@pytest.mark.parametrize(
    "case",
    _CONV_BF16["forward"],
    ids=lambda c: "n{}c{}h{}w{}-o{}s{}-t{}".format(*c["input"], c["out_channels"], c["stride"], c["threads"]),
)
def test_bf16_conv_1x1_forward_matches_the_recorded_events(case: dict[str, Any]) -> None:
    """oneDNN's AVX-512-BF16 1x1 forward: its store workspace (pixels rounded up to the register
    blocking) and, strided, its reduce-to-unit-stride copy, as recorded by benchmarks/record_conv_bf16.py."""
    with forced_isa({**_CONV_BF16["machine"], "threads": case["threads"]}):
        assert cpu_isa.onednn_isa() == "avx512_core_bf16"
        assert _conv_forward_events(case) == case["events"]
