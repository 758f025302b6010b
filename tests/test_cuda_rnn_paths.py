"""cuDNN's RNN on a CUDA target beyond the plain LSTM/GRU (tracer/devices/cuda/rnn.py): packed sequences, LSTM
projections, `nn.RNN` (tanh, relu), autocast's flat float16 weight copy, bias-less modules, and a note for
every call that still runs PyTorch's cell-by-cell kernels. No GPU here: each call's allocations, in order,
are held against the sizes aten/src/ATen/native/cudnn/RNN.cpp (`_cudnn_rnn`, `_cudnn_rnn_backward_input`,
`_cudnn_rnn_backward_weight`) and cudnn/AutocastRNN.cpp (`_cudnn_rnn_cast_reflatten`) give them, written
out here from the source; the reserve at its stated lower end (`RnnShape` states the range)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from memtrace.tracer.core.records import Kind, Phase, Result, Trace
from memtrace.tracer.core.specs import parse_input
from memtrace.tracer.devices.cuda import rnn as cuda_rnn
from memtrace.tracer.simulate import Config, Request, run_traced, simulate

F32, F16 = 4, 2
LENGTHS = [10, 7, 3, 2]  # a batch of 4 sequences, padded to 10 steps


def _batch_sizes(lengths: list[int]) -> list[int]:
    """`pack_padded_sequence`'s batch sizes: how many sequences are still running at each step."""
    return [sum(n > t for n in lengths) for t in range(max(lengths))]


class _Net(nn.Module):
    def __init__(self, rnn: nn.RNNBase, packed: bool = False, amp: bool = False) -> None:
        super().__init__()
        self.rnn, self.packed, self.amp = rnn, packed, amp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            data = nn.utils.rnn.pack_padded_sequence(x, LENGTHS, batch_first=True)
            return self.rnn(data)[0].data.sum()
        if self.amp:
            with torch.autocast("cuda", torch.bfloat16):
                return self.rnn(x)[0].float().sum()
        return self.rnn(x)[0].sum()


def _run(build: Callable[[], nn.Module], **config: object) -> tuple[Trace, Result]:
    request = Request(build, (parse_input("4x10x16"),), config=Config(device="cuda", **config))  # type: ignore[arg-type]
    return run_traced(request)


def _allocs(trace: Trace, phase: Phase) -> list[tuple[int, str]]:
    """(bytes, dtype) of the recurrent module's allocations in one phase of the second iteration."""
    return [
        (e.nbytes, trace.storages[e.storage].dtype.removeprefix("torch."))
        for e in trace.events
        if e.kind is Kind.ALLOC and e.iteration == 1 and e.phase is phase and e.module == "rnn"
    ]


def _flat(gates: int, hidden: int, out: int, proj: int, layers: int, dirs: int, fan_in: int) -> int:
    """cuDNN's weight space (`get_parameters`): w_ih, w_hh, both bias slots, w_hr per layer and direction."""
    first = gates * hidden * fan_in + gates * hidden * out + 2 * gates * hidden + proj * hidden
    above = gates * hidden * dirs * out + gates * hidden * out + 2 * gates * hidden + proj * hidden
    return dirs * (first + (layers - 1) * above)


def test_a_packed_lstm_with_projections_runs_cudnn() -> None:
    """`lstm(data, batch_sizes, ...)` -> `_cudnn_rnn` with `batch_sizes`: S is their sum, the output is 2-D
    `(sum, P)`, `hy` `(L, batch_sizes[0], P)`, `cy` `(L, batch_sizes[0], H)`; a packed input is already
    contiguous (no copy)."""
    trace, result = _run(
        lambda: _Net(nn.LSTM(16, 32, num_layers=2, batch_first=True, proj_size=8), packed=True)
    )
    tokens, batch, h, p, layers = sum(_batch_sizes(LENGTHS)), LENGTHS.__len__(), 32, 8, 2
    state_h, state_c = layers * batch * p * F32, layers * batch * h * F32
    reserve = tokens * (layers * 5 * h + (layers - 1) * p) * F32
    forward = [state_h, state_c, tokens * p * F32, state_h, state_c, 0, reserve]
    assert [n for n, _ in _allocs(trace, Phase.FORWARD)] == forward
    dw = _flat(4, h, p, p, layers, 1, 16) * F32
    assert dw == sum(q.numel() for q in nn.LSTM(16, 32, 2, proj_size=8).parameters()) * F32
    # zeros for dhy, dcy; dy made contiguous (the sum's gradient is expanded); dx, dhx, dcx; dw
    backward = [state_h, state_c, tokens * p * F32, tokens * 16 * F32, state_h, state_c, 0, dw, 0]
    assert [n for n, _ in _allocs(trace, Phase.BACKWARD)] == backward
    assert not any("cell-by-cell" in n for n in result.notes)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_nn_rnn_runs_cudnn_with_one_gate(nonlinearity: str) -> None:
    """`rnn_tanh` / `rnn_relu` -> `_cudnn_rnn` (modes CUDNN_RNN_TANH / RELU): no `cy`; the batch-first input
    is copied time-major; the reserve keeps each layer's hidden state."""
    rnn = lambda: _Net(nn.RNN(16, 32, num_layers=2, batch_first=True, nonlinearity=nonlinearity))  # noqa: E731
    trace, result = _run(rnn)
    s, h, layers = 40, 32, 2
    state = layers * 4 * h * F32
    forward = [state, s * 16 * F32, s * h * F32, state, 0, s * layers * h * F32]
    assert [n for n, _ in _allocs(trace, Phase.FORWARD)] == forward
    dw = _flat(1, h, h, 0, layers, 1, 16) * F32
    backward = [state, s * 16 * F32, s * h * F32, s * 16 * F32, state, 0, s * 16 * F32, dw, 0]
    assert [n for n, _ in _allocs(trace, Phase.BACKWARD)] == backward
    assert result.cuda is not None and result.cuda.ranges[0].what == cuda_rnn.WHAT


def test_autocast_runs_cudnn_in_float16_on_a_flat_copy_of_the_weights() -> None:
    """Under autocast (bfloat16 here) `_cudnn_rnn_cast_reflatten` runs cuDNN in float16: one flat buffer of
    float16 zeros with every weight copied in, then cx, hx and the input cast (right to left); the spaces in
    float16; the backward casts each weight's gradient back to float32, one tensor per weight."""
    trace, result = _run(lambda: _Net(nn.LSTM(16, 32, num_layers=2, batch_first=True), amp=True))
    s, h, layers = 40, 32, 2
    state = layers * 4 * h
    flat = _flat(4, h, h, 0, layers, 1, 16)
    forward = [
        (state * F32, "float32"),  # nn.LSTM's zero hx, cx
        (state * F32, "float32"),
        (flat * F16, "float16"),  # copy_weights_to_flat_buf_views
        (state * F16, "float16"),  # cached_cast(kHalf, cx), hx, input
        (state * F16, "float16"),
        (s * 16 * F16, "float16"),
        (s * 16 * F16, "float16"),  # the time-major copy
        (s * h * F16, "float16"),  # output, hy, cy
        (state * F16, "float16"),
        (state * F16, "float16"),
        (0, "uint8"),
        (s * (layers * 5 * h + (layers - 1) * h) * F16, "uint8"),
    ]
    assert _allocs(trace, Phase.FORWARD) == forward
    backward = _allocs(trace, Phase.BACKWARD)
    assert (flat * F16, "float16") in backward  # dw, in the flat buffer's dtype
    params = nn.LSTM(16, 32, num_layers=2).parameters()
    assert backward[-8:] == [(q.numel() * F32, "float32") for q in params]
    assert result.cuda is not None
    (stated,) = result.cuda.ranges
    shape = cuda_rnn.RnnShape("lstm", 10, 4, h, layers, 1, F16)
    low, high = shape.reserve()
    assert stated.extra_bytes == (high - low) + shape.workspace()[1]


def test_a_biasless_lstm_gets_fresh_gradients_copied_out_of_dw() -> None:
    """Without biases cuDNN's buffer keeps the bias slots, its layout is not the module's, and
    `_cudnn_rnn_backward_weight` copies each gradient out of `dw`, which it then frees."""
    trace, _ = _run(lambda: _Net(nn.LSTM(16, 32, num_layers=2, batch_first=True, bias=False)))
    dw = _flat(4, 32, 32, 0, 2, 1, 16) * F32
    params = list(nn.LSTM(16, 32, num_layers=2, bias=False).parameters())
    assert dw > sum(q.numel() for q in params) * F32
    backward = _allocs(trace, Phase.BACKWARD)
    at = backward.index((dw, "float32"))
    assert backward[at + 2 :] == [(q.numel() * F32, "float32") for q in params]
    frees = [e for e in trace.events if e.kind is Kind.FREE and e.iteration == 1 and e.nbytes == dw]
    assert frees and all(e.phase is Phase.BACKWARD for e in frees)


def test_flat_weights_is_the_modules_parameters_with_biases() -> None:
    """With biases cuDNN's flat buffer holds exactly the module's parameters, for every mode."""
    cases = [
        ("lstm", nn.LSTM(12, 20, num_layers=3, bidirectional=True, proj_size=6)),
        ("gru", nn.GRU(12, 20, num_layers=2, bidirectional=True)),
        ("rnn_tanh", nn.RNN(12, 20, num_layers=2)),
    ]
    for kind, module in cases:
        proj = getattr(module, "proj_size", 0)
        dirs = 2 if module.bidirectional else 1
        shape = cuda_rnn.RnnShape(kind, 1, 1, 20, module.num_layers, dirs, 4, proj=proj)
        assert shape.flat_weights(12) == sum(p.numel() for p in module.parameters()), kind


def test_bfloat16_rnns_follow_the_targets_cudnn() -> None:
    """`use_cudnn`: a bfloat16 RNN takes cuDNN from cuDNN 9.13 on sm80; on the default cuDNN (9.10.2) the
    GPU runs the cell-by-cell kernels, as simulated, and the report says so."""
    build = lambda: _Net(nn.LSTM(16, 32, batch_first=True).to(torch.bfloat16))  # noqa: E731
    old = simulate(build, ["4x10x16:bf16"], device="cuda")
    assert any("bfloat16 on sm80 with cuDNN 9.10.2" in n and "cuDNN 9.13" in n for n in old.notes)
    assert old.cuda is not None and not old.cuda.ranges
    new = simulate(build, ["4x10x16:bf16"], device="cuda", cudnn_version=91300)
    assert not any("bfloat16" in n for n in new.notes)
    assert new.cuda is not None and new.cuda.ranges[0].what == cuda_rnn.WHAT


def test_what_is_not_simulated_is_said() -> None:
    """A call the rule cannot take gets one note naming what ran instead; cuDNN's dropout state (kept per
    device) is said not to be simulated."""
    called = cuda_rnn._emulation("gru", lambda *a, **k: "decomposed")
    with torch.device("meta"):
        x, h = torch.empty(5, 2, 4), torch.empty(1, 2, 8)
        weights = list(nn.GRU(4, 8).parameters())
    from memtrace.tracer.devices.cuda.attention import target

    with target() as t:
        assert called(x, h, weights, True, 1, 0.0, True, False, False, extra=1) == "decomposed"
        assert called(torch.empty(5, 2, 4), h, weights, True, 1, 0.0, True, False, False) == "decomposed"
    assert list(t.notes) == [
        f"nn.GRU called with keyword arguments: {cuda_rnn.SIMULATED_INSTEAD}",
        f"nn.GRU ran on real tensors: {cuda_rnn.SIMULATED_INSTEAD}",
    ]
    res = simulate(lambda: _Net(nn.LSTM(16, 32, num_layers=2, dropout=0.2)), ["10x4x16"], device="cuda")
    (note,) = [n for n in res.notes if "dropout" in n]
    assert "not simulated" in note


def test_a_packed_gru_runs_cudnn() -> None:
    """`gru(data, batch_sizes, hx, ...)`: the packed overload of a one-hidden-state RNN (no `cy`)."""
    trace, _ = _run(lambda: _Net(nn.GRU(16, 32, batch_first=True), packed=True))
    tokens, batch, h = sum(_batch_sizes(LENGTHS)), len(LENGTHS), 32
    reserve = tokens * 4 * h * F32  # one layer: G + 1 = 4 hidden-sized rows per step
    forward = [batch * h * F32, tokens * h * F32, batch * h * F32, 0, reserve]
    assert [n for n, _ in _allocs(trace, Phase.FORWARD)] == forward


class _Frozen(nn.Module):
    """A trained projection in front of a frozen LSTM: the LSTM's input needs a gradient, its weights not."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)
        self.rnn = nn.LSTM(16, 32, num_layers=2).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.proj(x))[0].sum()


def test_frozen_weights_skip_the_weight_gradient() -> None:
    """`_cudnn_rnn_backward` runs `_cudnn_rnn_backward_weight` only for `output_mask[3]`: no `dw` here."""
    trace, _ = _run(_Frozen)
    s, state = 40, 2 * 10 * 32 * F32
    backward = [state, state, s * 32 * F32, s * 16 * F32, state, state, 0]
    assert [n for n, _ in _allocs(trace, Phase.BACKWARD)] == backward


def test_the_installed_torch_has_no_autocast_policy_for_the_whole_rnn_ops() -> None:
    """The premise of the autocast path: `lstm`, `gru`, `rnn_tanh`, `rnn_relu` carry no AutocastCUDA kernel
    (they reach cuDNN with the float32 input and `_cudnn_rnn`'s own kernel casts); only the cells do."""
    from memtrace.tracer.meta.autocast import registered_ops

    ops = registered_ops("cuda")
    assert not {"lstm.input", "lstm.data", "gru.input", "gru.data", "rnn_tanh.input", "rnn_relu.input"} & ops
    assert {"lstm_cell", "gru_cell", "rnn_tanh_cell"} <= ops


class _Unsorted(nn.Module):
    """Unsorted lengths (`enforce_sorted=False`): nn.LSTM permutes the hidden state it gets back from `_VF`,
    which must be `_VF`'s flat `(output, hy, cy)`; the final states feed the head."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(16, 32, batch_first=True)
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(x, [3, 10, 2, 7], batch_first=True, enforce_sorted=False)
        _, (h, c) = self.rnn(packed)
        return self.head(torch.cat([h[-1], c[-1]], dim=-1))


def test_the_hidden_state_comes_back_as_vf_returns_it() -> None:
    trace, result = _run(_Unsorted)
    tokens, batch, h = sum(_batch_sizes(LENGTHS)), len(LENGTHS), 32
    reserve = tokens * 5 * h * F32
    assert reserve in [n for n, _ in _allocs(trace, Phase.FORWARD)]
    assert result.cuda is not None and result.cuda.ranges
    assert batch * h * F32 in [n for n, _ in _allocs(trace, Phase.BACKWARD)]  # dhx
