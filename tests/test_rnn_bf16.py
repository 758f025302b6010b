"""oneDNN's bf16 LSTM in inference on an AVX-512-BF16 CPU without AMX (tracer/devices/cpu/rnn_onednn.py):
the brgemm kernel's buffers held against the allocator events recorded on such a CPU (any machine), and, where
this process's oneDNN runs those kernels, against the live allocator: the kernel's buffers byte for byte and
the simulated peak of bf16 LSTM steps (autocast and bf16 parameters)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from accuracy import compare
from reference import allocation_events
from test_rnn_cpu import _case, _Net
from torch import nn
from torch.profiler import ProfilerActivity, profile
from zoo import ZooCase

from memtrace.tracer.devices.cpu import isa as cpu_isa
from memtrace.tracer.devices.cpu.rnn import Layer
from memtrace.tracer.engine.recipes import Recipe

RECORDED = Path(__file__).parent / "data" / "cpu-avx512-bf16" / "lstm_tagger-bf16-infer.json"
TAGGER = Path(__file__).parent.parent / "benchmarks" / "models" / "lstm_tagger.py"
TOLERANCE = 0.005

live = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available() or cpu_isa.onednn_isa() != "avx512_core_bf16",
    reason="oneDNN's AVX-512-BF16 LSTM kernels (no AMX) do not run here",
)


def _kernel_calls(events: list[tuple[str, int]]) -> list[list[int]]:
    """The allocations of each `mkldnn_rnn_layer` kernel: its first run of allocations inside the op."""
    calls: list[list[int]] = []
    inside = False
    for op, size in events:
        if op == "aten::mkldnn_rnn_layer" and size > 0:
            if not inside:
                calls.append([])
            inside = True
            calls[-1].append(size)
        else:
            inside = False
    return calls


def test_inference_buffers_match_the_recorded_events() -> None:
    """The tagger's 2-layer bidirectional LSTM (T 32, batch 4, input 64, hidden 128), recorded with 2 threads:
    each layer's and direction's bf16 weight reorders and scratchpad."""
    rec = json.loads(RECORDED.read_text())
    threads = int(rec["machine"]["threads"])
    calls = _kernel_calls([(op, size) for op, size, _ in rec["events"]])
    layers = [Layer(32, 4, 64, 128, bf16=True)] * 2 + [Layer(32, 4, 256, 128, bf16=True)] * 2
    assert calls == [layer.forward_buffers(False, threads) for layer in layers]


def test_float32_inference_buffers_are_unchanged_by_the_bf16_rule() -> None:
    """The bf16 sizes are a switch on the element size: float32 keeps its own (4-byte) figures."""
    layer = Layer(32, 4, 64, 100)
    assert layer.forward_buffers(False, 2)[:2] == [64 * 4 * 128 * 4, 100 * 4 * 128 * 4]
    assert Layer(32, 4, 63, 100, bf16=True).forward_buffers(False, 2)[:2] == [64 * 512 * 2, 100 * 512 * 2]


# (T, batch, input, hidden): batch 1 (gates merged over time), input == hidden (fused brgemm batches), odd
# input and hidden sizes (weights padded to pairs of inputs and blocks of 32 outputs), a large batch
SHAPES = [(32, 4, 64, 128), (32, 1, 64, 100), (32, 4, 100, 100), (5, 3, 7, 9), (8, 64, 128, 128)]


def _live_buffers(t: int, b: int, i: int, h: int) -> list[int]:
    """One real bf16 `mkldnn_rnn_layer` in inference: ideep's own allocations."""
    bf = torch.bfloat16
    x, hx, cx = torch.randn(t, b, i, dtype=bf), torch.zeros(b, h, dtype=bf), torch.zeros(b, h, dtype=bf)
    w = [torch.randn(4 * h, i, dtype=bf), torch.randn(4 * h, h, dtype=bf)]
    w += [torch.randn(4 * h, dtype=bf), torch.randn(4 * h, dtype=bf)]
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.ops.aten.mkldnn_rnn_layer(x, *w, hx, cx, False, [], 2, h, 1, True, False, False, False)
    return [n for _, n, op in allocation_events(prof) if op == "aten::mkldnn_rnn_layer" and n > 0]


@live
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_inference_buffers_are_exact_live(shape: tuple[int, int, int, int]) -> None:
    expected = Layer(*shape, bf16=True).forward_buffers(False, torch.get_num_threads())
    assert _live_buffers(*shape) == expected


def _tagger() -> nn.Module:
    """benchmarks/models/lstm_tagger.py's default tagger (what `memtrace verify ...:build` builds)."""
    spec = importlib.util.spec_from_file_location("lstm_tagger", TAGGER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build()  # type: ignore[no-any-return]


PEAK_CASES = [
    ZooCase("lstm_tagger", _tagger, (((4, 32), "int64"),), high=1000),
    _case("lstm2-bidirectional", lambda: _Net(nn.LSTM(48, 100, 2, bidirectional=True)), (20, 3, 48)),
    _case(
        "lstm2-bidir-batch-first-nobias",
        lambda: _Net(nn.LSTM(20, 24, 2, bias=False, batch_first=True, bidirectional=True)),
        (5, 9, 20),
    ),
    _case("lstm-batch1", lambda: _Net(nn.LSTM(64, 64)), (20, 1, 64)),
]


@live
@pytest.mark.parametrize("recipe", [Recipe(amp="bf16"), Recipe(dtype="bf16")], ids=["amp", "params"])
@pytest.mark.parametrize("case", PEAK_CASES, ids=[c.name for c in PEAK_CASES])
def test_inference_peak_matches_the_allocator(case: ZooCase, recipe: Recipe) -> None:
    cmp = compare(case, "infer", "sgd", recipe)
    assert abs(cmp.error) < TOLERANCE, (
        f"{case.name} {recipe.text()}: predicted {cmp.predicted:,} vs measured {cmp.measured:,} "
        f"({100 * cmp.error:+.3f}%)"
    )
