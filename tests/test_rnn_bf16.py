"""oneDNN's bf16 LSTM on an AVX-512-BF16 CPU without AMX (tracer/devices/cpu/rnn_onednn.py): the brgemm
kernels' buffers held against the allocator events recorded on such a CPU (any machine), and, where this
process's oneDNN runs those kernels, against the live allocator: the kernels' buffers byte for byte
(inference, training forward and backward, over shapes and thread counts) and the simulated peak of bf16
LSTM steps (autocast and bf16 parameters, training and inference)."""

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

DATA = Path(__file__).parent / "data" / "cpu-avx512-bf16"
TAGGER = Path(__file__).parent.parent / "benchmarks" / "models" / "lstm_tagger.py"
TOLERANCE = 0.005

live = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available() or cpu_isa.onednn_isa() != "avx512_core_bf16",
    reason="oneDNN's AVX-512-BF16 LSTM kernels (no AMX) do not run here",
)


def _kernel_calls(events: list[tuple[str, int]], kernel: str) -> list[list[int]]:
    """The allocations of each call of `kernel`: each run of allocations inside the op."""
    calls: list[list[int]] = []
    inside = False
    for op, size in events:
        if op == kernel and size > 0:
            if not inside:
                calls.append([])
            inside = True
            calls[-1].append(size)
        else:
            inside = False
    return calls


def _recorded(mode: str) -> tuple[list[tuple[str, int]], int]:
    rec = json.loads((DATA / f"lstm_tagger-bf16-{mode}.json").read_text())
    return [(op, size) for op, size, _ in rec["events"]], int(rec["machine"]["threads"])


# the tagger's 2-layer bidirectional LSTM (T 32, batch 4, input 64 then 256, hidden 128), layer by layer
_TAGGER = [Layer(32, 4, 64, 128, bf16=True)] * 2 + [Layer(32, 4, 256, 128, bf16=True)] * 2


def test_inference_buffers_match_the_recorded_events() -> None:
    """Each layer's and direction's bf16 weight reorders and scratchpad (torch 2.13.0, 2 threads)."""
    events, threads = _recorded("infer")
    calls = _kernel_calls(events, "aten::mkldnn_rnn_layer")
    assert calls == [layer.forward_buffers(False, threads) for layer in _TAGGER]


def test_training_buffers_match_the_recorded_events() -> None:
    """The forward's reorders and scratchpad, the backward's (last layer first) reorders, diff weights and
    scratchpad (torch 2.14.1, 2 threads)."""
    events, threads = _recorded("train")
    forward = _kernel_calls(events, "aten::mkldnn_rnn_layer")
    backward = _kernel_calls(events, "aten::mkldnn_rnn_layer_backward")
    assert forward == [layer.forward_buffers(True, threads) for layer in _TAGGER]
    assert backward == [layer.backward_buffers(threads) for layer in reversed(_TAGGER)]


def test_float32_inference_buffers_are_unchanged_by_the_bf16_rule() -> None:
    """The bf16 sizes are a switch on the element size: float32 keeps its own (4-byte) figures."""
    layer = Layer(32, 4, 64, 100)
    assert layer.forward_buffers(False, 2)[:2] == [64 * 4 * 128 * 4, 100 * 4 * 128 * 4]
    assert Layer(32, 4, 63, 100, bf16=True).forward_buffers(False, 2)[:2] == [64 * 512 * 2, 100 * 512 * 2]


# (T, batch, input, hidden): batch 1 (gates merged over time), input == hidden (fused brgemm batches), odd
# input and hidden sizes (weights padded to pairs of inputs and blocks of 32 outputs), a large batch
SHAPES = [(32, 4, 64, 128), (32, 1, 64, 100), (32, 4, 100, 100), (5, 3, 7, 9), (8, 64, 128, 128)]


def _live_buffers(t: int, b: int, i: int, h: int, train: bool) -> tuple[int, list[int], list[int]]:
    """One real bf16 `mkldnn_rnn_layer` (and, training, its backward): workspace bytes and ideep's own
    allocations in each."""
    bf = torch.bfloat16
    x, hx, cx = torch.randn(t, b, i, dtype=bf), torch.zeros(b, h, dtype=bf), torch.zeros(b, h, dtype=bf)
    w = [torch.randn(4 * h, i, dtype=bf), torch.randn(4 * h, h, dtype=bf)]
    w += [torch.randn(4 * h, dtype=bf), torch.randn(4 * h, dtype=bf)]
    for p in w:
        p.requires_grad_(train)
    with (
        torch.set_grad_enabled(train),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        out = torch.ops.aten.mkldnn_rnn_layer(x, *w, hx, cx, False, [], 2, h, 1, True, False, False, train)
        if train:
            out[0].float().sum().backward()
    events = [(op, n) for _, n, op in allocation_events(prof)]
    forward = _kernel_calls(events, "aten::mkldnn_rnn_layer")[0]
    backward = _kernel_calls(events, "aten::mkldnn_rnn_layer_backward")
    return out[3].numel() if train else 0, forward, backward[0] if backward else []


@live
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_inference_buffers_are_exact_live(shape: tuple[int, int, int, int]) -> None:
    expected = Layer(*shape, bf16=True).forward_buffers(False, torch.get_num_threads())
    assert _live_buffers(*shape, train=False)[1] == expected


# training adds: batch 1 with input == hidden, where the diff-weights gemm's row block follows the threads
# (oneDNN's m_block heuristic: 24 rows in blocks of 12 on 2 threads, 40 in 20 on 2 threads but whole on 3)
TRAIN_SHAPES = [*SHAPES, (20, 1, 24, 24), (10, 1, 40, 40), (6, 1, 72, 72)]


@live
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", TRAIN_SHAPES, ids=["x".join(map(str, s)) for s in TRAIN_SHAPES])
def test_training_buffers_are_exact_live(shape: tuple[int, int, int, int], threads: int) -> None:
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        workspace, forward, backward = _live_buffers(*shape, train=True)
    finally:
        torch.set_num_threads(saved)
    layer = Layer(*shape, bf16=True)
    assert workspace == layer.workspace()
    assert forward == layer.forward_buffers(True, threads)
    assert backward == layer.backward_buffers(threads)


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
@pytest.mark.parametrize("mode", ["train", "infer"])
@pytest.mark.parametrize("recipe", [Recipe(amp="bf16"), Recipe(dtype="bf16")], ids=["amp", "params"])
@pytest.mark.parametrize("case", PEAK_CASES, ids=[c.name for c in PEAK_CASES])
def test_peak_matches_the_allocator(case: ZooCase, recipe: Recipe, mode: str) -> None:
    cmp = compare(case, mode, "sgd", recipe)
    assert abs(cmp.error) < TOLERANCE, (
        f"{case.name} {mode} {recipe.text()}: predicted {cmp.predicted:,} vs measured {cmp.measured:,} "
        f"({100 * cmp.error:+.3f}%)"
    )
