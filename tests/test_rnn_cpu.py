"""The CPU's recurrent kernels emulated on meta (tracer/devices/cpu/rnn.py): oneDNN's LSTM buffers byte for
byte, and the simulated peak of LSTM, GRU and RNN steps against the CPU allocator."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from accuracy import compare
from reference import allocation_events
from torch import nn
from torch.profiler import ProfilerActivity, profile
from zoo import ZooCase

from memtrace.tracer.devices.cpu import isa as cpu_isa
from memtrace.tracer.devices.cpu.rnn import Layer
from memtrace.tracer.engine.device_model import DeviceModel

# oneDNN's RNN buffers are modelled for its x86 kernels (AVX2 and up, as this process's oneDNN may use
# them, ONEDNN_MAX_CPU_ISA included); below AVX2 and off x86 (aarch64) other kernels run
pytestmark = pytest.mark.skipif(
    torch.backends.mkldnn.is_available() and not cpu_isa.mayiuse("avx2"),
    reason="oneDNN's RNN kernels for this ISA are not modelled",
)

TOLERANCE = 0.005
SHAPES = [(32, 8, 64, 128), (1, 1, 1, 1), (5, 7, 100, 33), (3, 130, 20, 40), (4, 1, 64, 64), (3, 4, 256, 512)]


def _kernel_buffers(t: int, b: int, i: int, h: int, grad: bool) -> tuple[int, list[int], list[int]]:
    """One real `mkldnn_rnn_layer` (and its backward): workspace bytes and ideep's own allocations."""
    x, hx, cx = torch.randn(t, b, i), torch.zeros(b, h), torch.zeros(b, h)
    w = [torch.randn(4 * h, i), torch.randn(4 * h, h), torch.randn(4 * h), torch.randn(4 * h)]
    for p in w:
        p.requires_grad_(grad)
    with (
        torch.set_grad_enabled(grad),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        out = torch.ops.aten.mkldnn_rnn_layer(x, *w, hx, cx, False, [], 2, h, 1, True, False, False, grad)
        workspace = out[3].numel() if grad else 0
        if grad:
            out[0].sum().backward()
    events = allocation_events(prof)
    forward = [n for _, n, op in events if op == "aten::mkldnn_rnn_layer" and n > 0]
    backward = [n for _, n, op in events if op == "aten::mkldnn_rnn_layer_backward" and n > 0]
    return workspace, forward, backward


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN")
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_onednn_buffers_are_exact(shape: tuple[int, int, int, int]) -> None:
    layer, threads = Layer(*shape), torch.get_num_threads()
    workspace, forward, backward = _kernel_buffers(*shape, grad=True)
    assert workspace == layer.workspace()
    assert forward == layer.forward_buffers(True, threads)
    assert backward == layer.backward_buffers(threads)
    _, forward, _ = _kernel_buffers(*shape, grad=False)
    assert forward == layer.forward_buffers(False, threads)


class _Net(nn.Module):
    """A recurrent layer; all its outputs (or the sequence only) go to the loss; packed if lengths given."""

    def __init__(self, rnn: nn.RNNBase, everything: bool = True, lengths: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.rnn, self.everything, self.lengths = rnn, everything, lengths

    def forward(self, x: torch.Tensor) -> object:
        if self.lengths:
            packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor(self.lengths), self.rnn.batch_first)
            out, hidden = self.rnn(packed)
            return out.data, hidden
        out = self.rnn(x)
        return out if self.everything else out[0]


def _case(name: str, build: Callable[[], nn.Module], shape: tuple[int, ...]) -> ZooCase:
    return ZooCase(name, build, ((shape, "float32"),))


CASES = [
    _case("lstm1", lambda: _Net(nn.LSTM(16, 32), everything=False), (12, 4, 16)),
    _case("lstm2-batch-first", lambda: _Net(nn.LSTM(16, 32, 2, batch_first=True)), (4, 12, 16)),
    _case("lstm2-bidirectional", lambda: _Net(nn.LSTM(16, 33, 2, bidirectional=True)), (7, 3, 16)),
    _case(
        "lstm2-bidir-batch-first-nobias",
        lambda: _Net(nn.LSTM(20, 24, 2, bias=False, batch_first=True, bidirectional=True)),
        (5, 9, 20),
    ),
    _case("lstm2-dropout", lambda: _Net(nn.LSTM(16, 32, 2, dropout=0.3), everything=False), (12, 4, 16)),
    _case("lstm-batch1", lambda: _Net(nn.LSTM(64, 64)), (20, 1, 64)),
    _case("lstm-projections", lambda: _Net(nn.LSTM(16, 32, 2, proj_size=8, batch_first=True)), (4, 6, 16)),
    _case("lstm-packed-equal", lambda: _Net(nn.LSTM(16, 32, 2), lengths=(6, 6, 6)), (6, 3, 16)),
    _case("lstm-packed", lambda: _Net(nn.LSTM(16, 32, bidirectional=True), lengths=(6, 5, 3, 2)), (6, 4, 16)),
    _case("gru2-batch-first", lambda: _Net(nn.GRU(16, 32, 2, batch_first=True)), (4, 12, 16)),
    _case("gru-bidirectional", lambda: _Net(nn.GRU(16, 32, bidirectional=True)), (12, 4, 16)),
    _case(
        "rnn-relu-bidirectional",
        lambda: _Net(nn.RNN(16, 32, 2, nonlinearity="relu", bidirectional=True)),
        (12, 4, 16),
    ),
]


@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize("mode", ["train", "infer"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_peak_matches_the_allocator(case: ZooCase, mode: str) -> None:
    cmp = compare(case, mode, "sgd")
    assert abs(cmp.error) < TOLERANCE, (
        f"{case.name} {mode}: predicted {cmp.predicted:,} vs measured {cmp.measured:,} "
        f"({100 * cmp.error:+.3f}%)"
    )


def test_real_tensors_and_reduced_precision_pass_through() -> None:
    """Patched, CPU tensors get PyTorch's own LSTM and unemulated meta calls still run; all is restored."""
    lstm = nn.LSTM(8, 16)
    x = torch.randn(5, 2, 8)
    with torch.no_grad():
        expected = lstm(x)[0]
        with DeviceModel("cpu").patched():
            assert "lstm" in torch._VF.__dict__
            torch.testing.assert_close(lstm(x)[0], expected)
            with torch.device("meta"):
                half = nn.LSTM(8, 16).to(torch.bfloat16)
            assert half(torch.empty(5, 2, 8, device="meta", dtype=torch.bfloat16))[0].shape == (5, 2, 16)
    assert not any(k in torch._VF.__dict__ for k in ("lstm", "gru", "rnn_tanh", "rnn_relu"))
