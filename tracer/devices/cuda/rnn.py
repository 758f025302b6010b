"""cuDNN's recurrent kernels on a CUDA target (`nn.LSTM`, `nn.GRU`, `nn.RNN`): what `_cudnn_rnn` allocates.

On a GPU `at::lstm` / `at::gru` / `at::rnn_tanh` / `at::rnn_relu` (aten/src/ATen/native/RNN.cpp) and their
packed overloads do not run the cell ops meta decomposes them into: where `use_cudnn(input)` holds (a float32,
float64 or float16 input; a bfloat16 one only with cuDNN 9.13 or later on sm80 and up,
`supportsBFloat16RNNWithCuDNN`) they run `_cudnn_rnn` (aten/src/ATen/native/cudnn/RNN.cpp), one call for all
layers and directions, LSTM projections (`proj_size`) and packed sequences (`batch_sizes`) included. Its
forward allocates, in this order: the input made contiguous (a copy when `batch_first`: the input is
transposed to time-major first; a packed input is 2-D and already contiguous), the output (time-major `(seq,
batch, D * R)`, packed `(sum(batch_sizes), D * R)`, R the projection size or else the hidden size), `hy` `(L *
D, batch, R)` (batch: `batch_sizes[0]` when packed) and `cy` `(L * D, batch, H)` for the LSTM (a 0-byte tensor
otherwise, left out here), then the two buffers whose sizes `cudnnGetRNNTempSpaceSizes` returns, the workspace
and, in training, the reserve space. The workspace and the copy are freed when the call returns; the reserve
is returned, saved by `CudnnRnnBackward0` with the input, the hidden state, the weights and the output, and
freed once the backward has run. The backward, `_cudnn_rnn_backward` (zeros for the output gradients autograd
did not give), runs `_cudnn_rnn_backward_input` (the input and the output gradient made contiguous, `dx`,
`dhx`, `dcx`, a workspace freed at once) and then `_cudnn_rnn_backward_weight` (the input made contiguous
again, `dw`: zeros of the flat weight buffer's size, a workspace freed at once; skipped when no weight needs a
gradient, `output_mask[3]`). With biases the parameter gradients are views into `dw`; without them cuDNN's
buffer still has the bias slots (`get_parameters` lays out weights and biases for every layer), the layouts
differ, and each gradient is a fresh tensor copied out of `dw`, which is then freed. The flat buffer holds,
for every layer and direction, G*H*I + G*H*R + 2*G*H elements (+ P*H for a projection), I the layer's input
size (D * R above the first layer). The weights are taken as flattened into one buffer, as `.to("cuda")`
leaves them (`flatten_parameters`), so no call copies them.

Under autocast PyTorch registers no policy for `lstm` and its siblings (the installed one's AutocastCUDA
kernels cover only the cell ops and, in a cuDNN build, `_cudnn_rnn`): they see the float32 input, take
cuDNN, and `_cudnn_rnn`'s own Autocast kernel (`_cudnn_rnn_cast_reflatten`,
aten/src/ATen/native/cudnn/AutocastRNN.cpp) runs in float16 whatever autocast's dtype is: unless the
weights are float16 already, `copy_weights_to_flat_buf_views` allocates a new flat buffer of float16 zeros
(the size above) and copies every weight into it, autograd-recorded (its backward casts each weight's
gradient back, one float32 tensor each); then `cached_cast(kHalf, ...)` casts `cx`, `hx` and the input (the
arguments evaluate right to left), fresh copies since none is a parameter. The flat copy lives while the
backward holds the weights, and the spaces are sized in float16.

cuDNN is closed: `cudnnGetRNNTempSpaceSizes` decides both sizes, and its docs say only that they follow the
network's geometry (layers, hidden size, directions) and the data's (sequence length, batch). So the rule
places each buffer at the lower end of a stated range and states the rest (`StatedRange`), which the
verdict weighs. With S = sequence length x batch (packed: the sum of the batch sizes), D directions, L
layers, H the hidden size, R the output size (the projection's, else H), G the gates (LSTM 4, GRU 3, RNN 1),
in elements of the dtype cuDNN runs in:

- reserve, lower end: what the backward must read and nothing else holds, from the cells' equations: every
  layer's gate activations and its cell state (LSTM) or the hidden side of its candidate, `W_hn h + b_hn`,
  which the reset gate's gradient needs (GRU), and the outputs of every layer but the last (the next
  layer's input): S * D * (L * (G + 1) * H + (L - 1) * R); for `nn.RNN` (tanh, relu) the activation is the
  hidden state and the next layer's input at once: S * D * L * H.
- reserve, upper end: every gate both before and after its activation, the cell state (or the candidate's
  hidden side), its tanh, and every layer's output, S * D * L * ((2G + 3) * H + P), P the projection size
  (0 without), plus a dropout mask between layers, S * D * (L - 1) * R. A structural bound, not measured:
  cuDNN keeps more than the minimum (pytorch/pytorch#2895: on a P100 with cuDNN 7 the GRU's reserve was
  864,000,000 B against the same LSTM's 736,000,000 B, though the GRU has fewer gates).
- workspace, lower end: 0 (placed as nothing). Upper end: 32 MiB plus one layer's input projections for
  every time step, S * D * G * H. Measured only indirectly: on the H200 with cuDNN 9.19
  (benchmarks/results/h200-torch2.11, zoo/lstm in inference, where there is no reserve) the real step took
  20,779,008 B more than a simulation without these spaces; pytorch/pytorch#2895 printed workspaces of
  13,169,920 B (GRU) and 17,730,560 B (LSTM) on a P100.

The step's range is the reserves' upper ends above their lower ends, summed over the distinct calls (a
module called again with the same shapes counts once), plus the largest workspace's upper end.
`benchmarks/gpu/collect_cudnn.py --rnn` measures both sizes in the owed GPU run.

Left to PyTorch's meta decomposition, each with one line in the report's notes (`Target.note`): calls on
real tensors, calls this rule cannot read (keyword arguments), and bfloat16 RNNs where the target's cuDNN or
GPU is too old for them (the GPU then runs the same cell-by-cell kernels). Not modelled, said in a note:
the dropout state (`_cudnn_init_dropout_state`, created once per device and kept, when a call trains with
dropout > 0; its size is cuDNN's `cudnnDropoutGetStatesSize`). The bias slots of a flattened bias-less
module's weights are not added to its parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...core.registry import patch
from ...meta.autocast import cached_cast, eligible
from ..shared import vf_arguments, vf_swapped
from .attention import current as current_target

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
MODULES = {"lstm": "nn.LSTM", "gru": "nn.GRU", "rnn_tanh": "nn.RNN (tanh)", "rnn_relu": "nn.RNN (relu)"}
WORKSPACE_FLOOR_HIGH = 32 * 2**20
WHAT = "cuDNN's RNN reserve and workspace"
CAUSE = "sized by cuDNN (cudnnGetRNNTempSpaceSizes), placed at the range's lower end"
BF16_CUDNN = 91300  # CUDNN_VERSION from which supportsBFloat16RNNWithCuDNN holds (on sm80 and up)
SIMULATED_INSTEAD = "PyTorch's cell-by-cell kernels were simulated instead of cuDNN's _cudnn_rnn"


@dataclass(frozen=True)
class RnnShape:
    """One `_cudnn_rnn` call's geometry; `proj` the LSTM's projection size, `tokens` a packed input's sum of
    batch sizes (0: not packed, S = seq x batch)."""

    kind: str
    seq: int
    batch: int
    hidden: int
    layers: int
    directions: int
    itemsize: int
    dropout: bool = False
    proj: int = 0
    tokens: int = 0

    @property
    def out(self) -> int:
        """R: what each direction of a layer outputs (the projection's size, else the hidden size)."""
        return self.proj or self.hidden

    def _steps(self) -> int:
        return self.tokens or self.seq * self.batch

    def reserve(self) -> tuple[int, int]:
        """(low, high) reserve bytes in training."""
        g, layers, h, r = GATES[self.kind], self.layers, self.hidden, self.out
        gated = self.kind in ("lstm", "gru")  # nn.RNN: the activation is the hidden state and the next input
        low = layers * (g + 1) * h + (layers - 1) * r if gated else layers * h
        high = layers * ((2 * g + 3) * h + self.proj) + ((layers - 1) * r if self.dropout else 0)
        unit = self._steps() * self.directions * self.itemsize
        return low * unit, high * unit

    def workspace(self) -> tuple[int, int]:
        """(low, high) workspace bytes of one forward or backward call."""
        elems = self._steps() * self.directions * self.hidden * GATES[self.kind]
        return 0, WORKSPACE_FLOOR_HIGH + elems * self.itemsize

    def flat_weights(self, input_size: int) -> int:
        """Elements of cuDNN's flat weight buffer (`cudnnGetRNNWeightSpaceSize`): weights and both biases of
        every layer and direction, the bias slots there with or without biases, and the projections."""
        g, h, r = GATES[self.kind], self.hidden, self.out
        total = 0
        for layer in range(self.layers):
            fan_in = input_size if layer == 0 else self.directions * r
            total += self.directions * (g * h * fan_in + g * h * r + 2 * g * h + self.proj * h)
        return total


@dataclass(frozen=True)
class _Call:
    shape: RnnShape
    train: bool
    batch_first: bool
    has_biases: bool
    input_size: int
    dropout_state: bool = False  # trains with dropout > 0: `get_dropout_state` makes cuDNN's state
    cast: torch.dtype | None = None  # autocast: the dtype `_cudnn_rnn_cast_reflatten` runs cuDNN in (fp16)


def _state(call: _Call, x: Tensor, params: Sequence[Tensor]) -> None:
    """Record the call's stated range on the run's target: once per distinct call."""
    ranges = current_target().ranges
    s = call.shape
    key = ("cudnn_rnn", s.kind, id(params[0]), tuple(x.shape), s.tokens, call.train, call.cast)
    reserve = s.reserve()
    ranges[key] = (WHAT, CAUSE, reserve[1] - reserve[0] if call.train else 0)
    ws = s.workspace()
    old = ranges.get("cudnn_rnn_workspace", (WHAT, CAUSE, 0))[2]
    ranges["cudnn_rnn_workspace"] = (WHAT, CAUSE, max(old, ws[1] - ws[0]))
    if call.dropout_state:
        current_target().note(
            f"{MODULES[s.kind]} trains with dropout: cuDNN's dropout state (_cudnn_init_dropout_state, "
            "cudnnDropoutGetStatesSize, created once per device and kept) is not simulated"
        )


def _time_major(x: Tensor, call: _Call) -> Tensor:
    """`input.contiguous()` after the transpose to time-major: a copy when batch-first (not packed)."""
    return x.transpose(0, 1).contiguous() if call.batch_first and not call.shape.tokens else x.contiguous()


def _scratch(nbytes: int, like: Tensor) -> Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, device=like.device)


def _rows(s: RnnShape, width: int) -> tuple[int, ...]:
    """A time-major tensor's shape: `(seq, batch, width)`, or `(sum(batch_sizes), width)` when packed."""
    return (s.tokens, width) if s.tokens else (s.seq, s.batch, width)


def _batch_major(t: Tensor, call: _Call) -> Tensor:
    return t.transpose(0, 1) if call.batch_first and not call.shape.tokens else t


class _CudnnRnn(torch.autograd.Function):
    """`_cudnn_rnn` and its backward, as meta allocations of cuDNN's sizes in RNN.cpp's order."""

    @staticmethod
    def forward(ctx: Any, call: _Call, x: Tensor, hx: Tensor, cx: Tensor | None, *params: Tensor) -> Any:
        s = call.shape
        xc = _time_major(x, call)
        output = x.new_empty(_rows(s, s.directions * s.out))
        hy = hx.new_empty(hx.shape)
        cy = cx.new_empty(cx.shape) if cx is not None else None
        workspace = _scratch(s.workspace()[0], x)
        reserve = _scratch(s.reserve()[0] if call.train else 0, x)
        del workspace, xc
        out = _batch_major(output, call)
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
        xc, dyc = _time_major(x, call), _time_major(dy, call)
        dx = x.new_empty(_rows(s, x.shape[-1]))
        dhx = hx.new_empty(hx.shape)
        dcx = cx.new_empty(cx.shape) if cx is not None else None
        workspace = _scratch(s.workspace()[0], x)
        del workspace, xc, dyc, dhy, dcy
        if not any(ctx.needs_input_grad[4:]):  # output_mask[3]: no weight needs a gradient, no dw
            return (None, _batch_major(dx, call), dhx, dcx, *(None for _ in params))
        # _cudnn_rnn_backward_weight
        xc = _time_major(x, call)
        dw = torch.zeros(s.flat_weights(call.input_size), dtype=params[0].dtype, device=x.device)
        workspace = _scratch(s.workspace()[0], x)
        del workspace, xc
        grads_w = _weight_grads(dw, params, call.has_biases)
        return (None, _batch_major(dx, call), dhx, dcx, *grads_w)


def _weight_grads(dw: Tensor, params: Sequence[Tensor], views: bool) -> list[Tensor]:
    """Views into `dw` where cuDNN's layout is the module's (with biases), else fresh copies of each."""
    grads, at = [], 0
    for p in params:
        piece = dw[at : at + p.numel()].view(p.shape)
        grads.append(piece if views else torch.empty_like(p).copy_(piece))
        at += p.numel()
    return grads


class _FlatCast(torch.autograd.Function):
    """`copy_weights_to_flat_buf_views` under autocast: one flat buffer of zeros in the cast dtype, every
    weight copied into it; the backward casts each gradient back (`CopyBackwards`: `grad.to(src)`)."""

    @staticmethod
    def forward(ctx: Any, count: int, dtype: torch.dtype, *params: Tensor) -> Any:
        flat = torch.zeros(count, dtype=dtype, device=params[0].device)
        views, at = [], 0
        for p in params:
            view = flat[at : at + p.numel()].view(p.shape)
            view.copy_(p)
            views.append(view)
            at += p.numel()
        ctx.dtypes = [p.dtype for p in params]
        return tuple(views)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> Any:
        back = [g.to(d) if g is not None else None for g, d in zip(grads, ctx.dtypes, strict=True)]
        return (None, None, *back)


_Parsed = tuple[_Call, Tensor, Tensor, Tensor | None, list[Tensor]]


def _note(kind: str, why: str) -> None:
    current_target().note(f"{MODULES[kind]} {why}: {SIMULATED_INSTEAD}")


def _cudnn_takes(kind: str, x: Tensor) -> bool:
    """RNN.cpp's `use_cudnn(input)` on the target (a bfloat16 RNN needs cuDNN 9.13 and sm80), with a note
    where the GPU itself runs the cell-by-cell kernels."""
    if x.numel() == 0 or not x.dtype.is_floating_point:
        return False
    if x.dtype != torch.bfloat16:
        return True
    gpu = current_target().gpu
    if gpu.cudnn_version >= BF16_CUDNN and gpu.major >= 8:
        return True
    v = gpu.cudnn_version
    cudnn = f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    current_target().note(
        f"{MODULES[kind]} in bfloat16 on sm{gpu.major}{gpu.minor} with cuDNN {cudnn}: PyTorch "
        "gives bfloat16 RNNs to cuDNN from cuDNN 9.13 on sm80, so the GPU runs its cell-by-cell kernels, "
        "as simulated"
    )
    return False


def _parse(kind: str, args: Sequence[Any]) -> _Parsed | None:
    """The call's geometry, or None for what is left to the decomposition (said in a note where the GPU
    would run cuDNN)."""
    unpacked = vf_arguments(kind, args)
    if unpacked is None:
        _note(kind, "called with arguments this rule does not read")
        return None
    x, batch_sizes, hidden, flags = unpacked
    params = list(flags[0])
    hx, cx = (hidden[0], hidden[1]) if kind == "lstm" else (hidden, None)
    tensors = [x, hx, *params, *([cx] if cx is not None else [])]
    if not all(isinstance(t, Tensor) and t.device.type == "meta" for t in tensors):
        _note(kind, "ran on real tensors")
        return None
    if batch_sizes is not None and batch_sizes.device.type != "cpu":
        _note(kind, "got its batch sizes on meta (no values)")
        return None
    if x.dim() != (2 if batch_sizes is not None else 3):
        _note(kind, f"called with a {x.dim()}-D input")
        return None
    if not _cudnn_takes(kind, x):
        return None
    has_biases, layers, dropout, train, bidirectional, batch_first = (
        bool(flags[1]), int(flags[2]), float(flags[3]), bool(flags[4]), bool(flags[5]), bool(flags[6])
    )  # fmt: skip
    proj = int(hx.shape[-1]) if cx is not None and cx.shape[-1] != hx.shape[-1] else 0
    hidden_size = int(cx.shape[-1]) if cx is not None else int(hx.shape[-1])
    if batch_sizes is not None:
        sizes = [int(b) for b in batch_sizes.tolist()]
        seq, batch, tokens = len(sizes), sizes[0], sum(sizes)
    else:
        seq, batch = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
        tokens = 0
    cast = torch.float16 if torch.is_autocast_enabled("cuda") and eligible(x, "cuda") else None
    shape = RnnShape(
        kind, int(seq), int(batch), hidden_size, layers, 2 if bidirectional else 1,
        (cast or x.dtype).itemsize, dropout=train and dropout > 0 and layers > 1, proj=proj, tokens=tokens,
    )  # fmt: skip
    call = _Call(shape, train, batch_first, has_biases, int(x.shape[-1]), train and dropout > 0, cast)
    return call, x, hx, cx, params


def _cast(call: _Call, x: Tensor, hx: Tensor, cx: Tensor | None, params: list[Tensor]) -> _Parsed:
    """`_cudnn_rnn_cast_reflatten`: the flat float16 copy of the weights (unless they are float16
    already), then cx, hx and the input cast."""
    dtype = call.cast
    assert dtype is not None
    if eligible(params[0], "cuda") and params[0].dtype != dtype:
        params = list(_FlatCast.apply(call.shape.flat_weights(call.input_size), dtype, *params))
    cx = cached_cast(dtype, cx, "cuda") if cx is not None else None
    hx = cached_cast(dtype, hx, "cuda")
    x = cached_cast(dtype, x, "cuda")
    return call, x, hx, cx, params


def _emulation(kind: str, original: Any) -> Any:
    """A drop-in for `_VF.<kind>` that runs `_cudnn_rnn`'s allocations on meta tensors."""

    def rnn(*args: Any, **kwargs: Any) -> Any:
        if kwargs:
            _note(kind, "called with keyword arguments")
            return original(*args, **kwargs)
        parsed = _parse(kind, args)
        if parsed is None:
            return original(*args, **kwargs)
        call, x, hx, cx, params = parsed
        _state(call, x, params)
        if call.cast is not None:
            call, x, hx, cx, params = _cast(call, x, hx, cx, params)
        return tuple(_CudnnRnn.apply(call, x, hx, cx, *params))  # as `_VF`: (output, hy[, cy]), flat

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


@patch("cuda", "rnn_tanh")
def rnn_tanh_patch() -> AbstractContextManager[None]:
    """`torch._VF.rnn_tanh` on meta tensors allocates what cuDNN's tanh RNN allocates (`_cudnn_rnn`)."""
    return _swap_vf("rnn_tanh")


@patch("cuda", "rnn_relu")
def rnn_relu_patch() -> AbstractContextManager[None]:
    """`torch._VF.rnn_relu` on meta tensors allocates what cuDNN's relu RNN allocates (`_cudnn_rnn`)."""
    return _swap_vf("rnn_relu")
