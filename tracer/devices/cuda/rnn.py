"""cuDNN's recurrent kernels on a CUDA target (`nn.LSTM`, `nn.GRU`): the reserve space and the workspace.

On a GPU `at::lstm` / `at::gru` do not run the cell ops meta decomposes them into: with cuDNN acceptable they
run `_cudnn_rnn` (aten/src/ATen/native/cudnn/RNN.cpp), one call for every layer and direction. Its forward
allocates, in this order: the input made contiguous (a copy when `batch_first`: the input is transposed to
time-major first), the output, `hy` (and `cy` for the LSTM), then the two buffers whose sizes
`cudnnGetRNNTempSpaceSizes` returns, the workspace and, in training, the reserve space. The workspace and the
copy are freed when the call returns; the reserve is returned, saved by `CudnnRnnBackward0` with the input,
the hidden state, the weights and the output, and freed once the backward has run. The backward,
`_cudnn_rnn_backward`, runs `_cudnn_rnn_backward_input` (the input and the output gradient made
contiguous, `dx`, `dhx`, `dcx`, a workspace freed at once) and then `_cudnn_rnn_backward_weight` (the input
made contiguous again, `dw`, zeros of the flat weights' size, a workspace freed at once); the parameter
gradients are views into `dw`. The weights are taken as flattened into one buffer, as `.to("cuda")`
leaves them (`flatten_parameters`), so no call copies them.

cuDNN is closed: `cudnnGetRNNTempSpaceSizes` decides both sizes, and its docs say only that they follow the
network's geometry (layers, hidden size, directions) and the data's (sequence length, batch). So the rule
places each buffer at the lower end of a stated range and states the rest (`StatedRange`), which the
verdict weighs. With S = sequence length x batch, D directions, L layers, H the hidden size, G the gates
(LSTM 4, GRU 3), in elements of the input's dtype:

- reserve, lower end: what the backward must read and nothing else holds, from the cells' equations: every
  layer's gate activations and its cell state (LSTM) or the hidden side of its candidate, `W_hn h + b_hn`,
  which the reset gate's gradient needs (GRU), and the outputs of every layer but the last (the next
  layer's input): S * D * (L * (G + 1) * H + (L - 1) * H).
- reserve, upper end: every gate both before and after its activation, the cell state (or the candidate's
  hidden side), its tanh, and every layer's output, S * D * L * (2G + 3) * H, plus a dropout mask between
  layers. A structural bound, not measured: cuDNN keeps more than the minimum (pytorch/pytorch#2895: on a
  P100 with cuDNN 7 the GRU's reserve was 864,000,000 B against the same LSTM's 736,000,000 B, though the
  GRU has fewer gates).
- workspace, lower end: 0 (placed as nothing). Upper end: 32 MiB plus one layer's input projections for
  every time step, S * D * G * H. Measured only indirectly: on the H200 with cuDNN 9.19
  (benchmarks/results/h200-torch2.11, zoo/lstm in inference, where there is no reserve) the real step took
  20,779,008 B more than a simulation without these spaces; pytorch/pytorch#2895 printed workspaces of
  13,169,920 B (GRU) and 17,730,560 B (LSTM) on a P100.

The step's range is the reserves' upper ends above their lower ends, summed over the distinct calls (a
module called again with the same shapes counts once), plus the largest workspace's upper end.
`benchmarks/gpu/collect_cudnn.py --rnn` measures both sizes in the owed GPU run.

Left to PyTorch's meta decomposition (the cell ops, no cuDNN spaces): packed sequences, LSTMs with
projections, `nn.RNN`, calls under autocast, calls on real tensors. Not modelled: the dropout state
(`_cudnn_init_dropout_state`, cached once per device when dropout > 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...core.registry import patch
from ..shared import vf_swapped
from .attention import current as current_target

GATES = {"lstm": 4, "gru": 3}
WORKSPACE_FLOOR_HIGH = 32 * 2**20
WHAT = "cuDNN's RNN reserve and workspace"
CAUSE = "sized by cuDNN (cudnnGetRNNTempSpaceSizes), placed at the range's lower end"


@dataclass(frozen=True)
class RnnShape:
    """One `_cudnn_rnn` call's geometry."""

    kind: str
    seq: int
    batch: int
    hidden: int
    layers: int
    directions: int
    itemsize: int
    dropout: bool = False

    def _elems(self) -> int:
        return self.seq * self.batch * self.directions * self.hidden

    def reserve(self) -> tuple[int, int]:
        """(low, high) reserve bytes in training."""
        g, layers, e = GATES[self.kind], self.layers, self._elems()
        low = e * (layers * (g + 1) + layers - 1)
        high = e * layers * (2 * g + 3) + (e * (layers - 1) if self.dropout else 0)
        return low * self.itemsize, high * self.itemsize

    def workspace(self) -> tuple[int, int]:
        """(low, high) workspace bytes of one forward or backward call."""
        return 0, WORKSPACE_FLOOR_HIGH + self._elems() * GATES[self.kind] * self.itemsize


@dataclass(frozen=True)
class _Call:
    shape: RnnShape
    train: bool
    batch_first: bool
    has_biases: bool


def _state(call: _Call, x: Tensor, hx: Tensor, params: Sequence[Tensor]) -> None:
    """Record the call's stated range on the run's target: once per distinct call."""
    ranges = current_target().ranges
    s = call.shape
    key = ("cudnn_rnn", s.kind, id(params[0]), tuple(x.shape), call.train)
    reserve = s.reserve()
    ranges[key] = (WHAT, CAUSE, reserve[1] - reserve[0] if call.train else 0)
    ws = s.workspace()
    old = ranges.get("cudnn_rnn_workspace", (WHAT, CAUSE, 0))[2]
    ranges["cudnn_rnn_workspace"] = (WHAT, CAUSE, max(old, ws[1] - ws[0]))


def _time_major(x: Tensor, batch_first: bool) -> Tensor:
    """`input.contiguous()` after the transpose to time-major: a copy when batch-first."""
    return x.transpose(0, 1).contiguous() if batch_first else x.contiguous()


def _scratch(nbytes: int, like: Tensor) -> Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, device=like.device)


class _CudnnRnn(torch.autograd.Function):
    """`_cudnn_rnn` and its backward, as meta allocations of cuDNN's sizes in RNN.cpp's order."""

    @staticmethod
    def forward(ctx: Any, call: _Call, x: Tensor, hx: Tensor, cx: Tensor | None, *params: Tensor) -> Any:
        s = call.shape
        xc = _time_major(x, call.batch_first)
        output = x.new_empty((s.seq, s.batch, s.directions * s.hidden))
        hy = hx.new_empty(hx.shape)
        cy = cx.new_empty(cx.shape) if cx is not None else None
        workspace = _scratch(s.workspace()[0], x)
        reserve = _scratch(s.reserve()[0] if call.train else 0, x)
        del workspace, xc
        out = output.transpose(0, 1) if call.batch_first else output
        ctx.call = call
        ctx.save_for_backward(x, hx, cx, out, reserve, *params)
        return (out, hy, cy) if cy is not None else (out, hy)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> Any:
        call: _Call = ctx.call
        s = call.shape
        x, hx, cx, out, _reserve, *params = ctx.saved_tensors  # the reserve: freed after this
        dy = grads[0] if grads[0] is not None else torch.zeros_like(out)
        dhy = grads[1] if grads[1] is not None else torch.zeros_like(hx)
        dcy = (grads[2] if grads[2] is not None else torch.zeros_like(cx)) if cx is not None else None
        # _cudnn_rnn_backward_input
        xc, dyc = _time_major(x, call.batch_first), _time_major(dy, call.batch_first)
        dx = x.new_empty((s.seq, s.batch, x.shape[-1]))
        dhx = hx.new_empty(hx.shape)
        dcx = cx.new_empty(cx.shape) if cx is not None else None
        workspace = _scratch(s.workspace()[0], x)
        del workspace, xc, dyc, dhy, dcy
        # _cudnn_rnn_backward_weight: the parameter gradients are views into one buffer
        xc = _time_major(x, call.batch_first)
        dw = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=x.device)
        workspace = _scratch(s.workspace()[0], x)
        del workspace, xc
        grads_w, at = [], 0
        for p in params:
            grads_w.append(dw[at : at + p.numel()].view(p.shape))
            at += p.numel()
        dx = dx.transpose(0, 1) if call.batch_first else dx
        return (None, dx, dhx, dcx, *grads_w)


_Parsed = tuple[_Call, Tensor, Tensor, Tensor | None, list[Tensor]]


def _parse(kind: str, args: Sequence[Any]) -> _Parsed | None:
    """`(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)`; None for
    what is left to the decomposition (packed input, projections, autocast, real tensors)."""
    packed = len(args) == 9 and isinstance(args[1 if kind == "lstm" else 2], Tensor)
    if len(args) != 9 or packed or torch.is_autocast_enabled("cuda"):
        return None
    x, params = args[0], list(args[2])
    hx, cx = (args[1][0], args[1][1]) if kind == "lstm" else (args[1], None)
    tensors = [x, hx, *params, *([cx] if cx is not None else [])]
    if not all(isinstance(t, Tensor) and t.device.type == "meta" for t in tensors) or x.dim() != 3:
        return None
    if not x.dtype.is_floating_point or (cx is not None and cx.shape[-1] != hx.shape[-1]):
        return None  # an LSTM with projections
    has_biases, layers, dropout, train, bidirectional, batch_first = (
        bool(args[3]), int(args[4]), float(args[5]), bool(args[6]), bool(args[7]), bool(args[8])
    )  # fmt: skip
    seq, batch = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    directions = 2 if bidirectional else 1
    shape = RnnShape(
        kind, int(seq), int(batch), int(hx.shape[-1]), layers, directions, x.element_size(),
        dropout=train and dropout > 0 and layers > 1,
    )  # fmt: skip
    return _Call(shape, train, batch_first, has_biases), x, hx, cx, params


def _emulation(kind: str, original: Any) -> Any:
    """A drop-in for `_VF.<kind>` that runs `_cudnn_rnn`'s allocations on meta tensors."""

    def rnn(*args: Any, **kwargs: Any) -> Any:
        parsed = None if kwargs else _parse(kind, args)
        if parsed is None:
            return original(*args, **kwargs)
        call, x, hx, cx, params = parsed
        _state(call, x, hx, params)
        outs = _CudnnRnn.apply(call, x, hx, cx, *params)
        return (outs[0], (outs[1], outs[2])) if kind == "lstm" else (outs[0], outs[1])

    return rnn


def _swap_vf(kind: str) -> AbstractContextManager[None]:
    return vf_swapped(kind, lambda original: _emulation(kind, original))


@patch("cuda", "lstm")
def lstm_patch() -> AbstractContextManager[None]:
    """`torch._VF.lstm` on meta tensors allocates what cuDNN's LSTM allocates (`_cudnn_rnn`)."""
    return _swap_vf("lstm")


@patch("cuda", "gru")
def gru_patch() -> AbstractContextManager[None]:
    """`torch._VF.gru` on meta tensors allocates what cuDNN's GRU allocates (`_cudnn_rnn`)."""
    return _swap_vf("gru")
