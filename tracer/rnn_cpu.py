"""The CPU's fused LSTM kernel (oneDNN `mkldnn_rnn_layer`), emulated on meta tensors.

On a real CPU `aten::lstm` does not run the cell ops meta decomposes it into: with float32 tensors and
oneDNN available it runs `mkldnn_rnn` (aten/src/ATen/native/mkldnn/RNN.cpp), one `mkldnn_rnn_layer` per
layer and direction, each allocating its outputs, the summed bias, a oneDNN workspace that autograd saves
for backward, and (inside ideep) weight reorders and a scratchpad. `mkldnn_rnn_layer_backward` allocates the
gradients plus its own reorders, zeroed diff-weight buffers and scratchpad.

While the `cpu/lstm` patch is active, `torch._VF.lstm` (what `nn.LSTM` calls) is replaced by an emulation
that, for meta tensors on the mkldnn path, allocates meta tensors of the same sizes in the same order, and
whose per-layer `torch.autograd.Function` saves what `MkldnnRnnLayerBackward0` saves. The sizes of oneDNN's
buffers follow oneDNN v3.x (src/cpu/rnn/rnn_utils.*, ref_rnn.cpp, x64/rnn/rnn_brgemm_utils.cpp): training
uses the reference implementation with gemm-friendly leading dimensions; float32 inference uses the brgemm
implementation (blocked weights, 32 output channels per block on AVX-512).

Not emulated (the original `_VF.lstm` runs instead): packed sequences, LSTMs with projections, dtypes
other than float32, real (non-meta) tensors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from memtrace.tracer.devices import patch

_F32 = 4  # bytes per float32 element
_GATES = 4  # LSTM gates
_PAGE = 4096  # oneDNN's rnn workspace/scratchpad sections are page aligned
_ALIGN = 128  # oneDNN scratchpad registry's default alignment per booked buffer
_BATCH_ELEMENT = 40  # sizeof(brgemm_batch_element_t)


# --------------------------------------------------------------------------- oneDNN buffer sizes


def _rnd_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def good_ld(dim: int, elem: int = _F32) -> int:
    """oneDNN's gemm leading dimension: 64-byte aligned, never a multiple of 256 elements (4K aliasing)."""
    ld = _rnd_up(dim, 64 // elem)
    return ld + 64 // elem if ld % 256 == 0 else ld


def _sections(sizes: Sequence[int], start: int = 0) -> int:
    """oneDNN's `register_space`: each section starts page aligned."""
    offset = start
    for size in sizes:
        offset = _rnd_up(offset, _PAGE) + size
    return offset


@dataclass(frozen=True)
class Layer:
    """One `mkldnn_rnn_layer` call: sequence length, batch, input size, hidden size (float32)."""

    t: int
    b: int
    i: int
    h: int

    @property
    def states(self) -> int:
        """Rows of the per-timestep state buffers: (layers + 1) * directions * (T + 1) * batch."""
        return 2 * (self.t + 1) * self.b

    def workspace(self) -> int:
        """Bytes of the training workspace (`pd.workspace_desc().get_size()`)."""
        t, b, h, wide = self.t, self.b, self.h, max(self.i, self.h)
        return _sections(
            [
                t * b * good_ld(_GATES * h) * _F32,  # ws_gates
                t * b * good_ld(h) * _F32,  # ws_ht
                self.states * good_ld(wide) * _F32,  # ws_states_layer (== iter)
                self.states * h * _F32,  # ws_states_iter_c
                self.states * good_ld(wide) * _F32,  # ws_diff_states_layer
                self.states * good_ld(wide) * _F32,  # ws_diff_states_iter
                self.states * h * _F32,  # ws_diff_states_iter_c
                0,  # ws_grid_comp (page-aligns the end)
            ]
        )

    def _scratch(self, rnn_space: int, gate_steps: int, training: bool) -> int:
        b, h = self.b, self.h
        space = _sections(
            [
                _F32 * gate_steps * b * good_ld(_GATES * h),  # scratch_gates
                _F32 * b * good_ld(h),  # scratch_ht
                _F32 * b * good_ld(h) if training else 0,  # scratch_diff_ht
                0,  # scratch_cell
            ],
            rnn_space,
        )
        pointers = 3 * (8 + _ALIGN) + (8 * _F32 + _ALIGN)  # weights/bias pointer arrays
        return space + _PAGE + pointers

    def scratch_forward(self) -> int:
        """Training forward: gemms merged over time when the batch is under 128."""
        return self._scratch(0, self.t if self.b < 128 else 1, True)

    def scratch_backward(self) -> int:
        return self._scratch(0, self.t, True)

    def scratch_inference(self, threads: int) -> int:
        """brgemm inference: no workspace, its state buffers go to the scratchpad, plus brgemm batches."""
        merged = self.b <= 1 and self.t >= 2
        states = _sections(
            [0, 0, self.states * good_ld(max(self.i, self.h)) * _F32, self.states * self.h * _F32, 0, 0, 0, 0]
        )
        fused = self.i == self.h and not merged
        batch = 2 * (2 if fused else 1) * threads * _BATCH_ELEMENT + _ALIGN
        return self._scratch(states, self.t if merged else 1, False) + batch

    def ldigo(self, k: int) -> int:
        """Weights (k inputs) in oneDNN's forward layout: k rows of good_ld(4H) (size-1 dims are unstrided)."""
        return (k * good_ld(_GATES * self.h) if k > 1 else _GATES * self.h) * _F32

    def ldgoi(self, k: int) -> int:
        """Weights (k inputs) in oneDNN's backward layout: 4H rows of good_ld(k)."""
        return _GATES * self.h * good_ld(k) * _F32

    def blocked(self, k: int, n_block: int) -> int:
        """Weights in brgemm's ldgOi{n}o layout: output channels padded to the block."""
        return k * _GATES * _rnd_up(self.h, n_block) * _F32

    def forward_buffers(self, training: bool, threads: int) -> list[int]:
        """ideep's allocations inside the forward kernel, in order (freed in reverse)."""
        if training:
            reorders = [self.ldigo(k) for k in (self.i, self.h) if k > 1]
            return [*reorders, self.scratch_forward()]
        nb = _n_block(self.b)
        return [self.blocked(self.i, nb), self.blocked(self.h, nb), self.scratch_inference(threads)]

    def backward_buffers(self) -> list[int]:
        """ideep's allocations inside the backward kernel, in order (freed in reverse)."""
        reorders = [self.ldgoi(k) for k in (self.i, self.h) if good_ld(k) != k]
        diff = [self.ldigo(self.i), self.ldigo(self.h), _GATES * self.h * _F32]
        return [*reorders, *diff, self.scratch_backward()]


def _n_block(batch: int) -> int:
    """brgemm's output-channel block for float32 LSTM: 2 vectors, 4 on AVX2 with a batch of one."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return 32
    return 32 if batch == 1 else 16


# --------------------------------------------------------------------------- the emulated kernels


@dataclass(frozen=True)
class _Call:
    """The non-tensor arguments of one `mkldnn_rnn_layer` call."""

    layer: Layer
    has_biases: bool
    threads: int


def _kernel_buffers(sizes: Sequence[int], device: torch.device) -> None:
    """Buffers a kernel allocates in order and frees before it returns (ideep reorders, scratchpad)."""
    held = [torch.empty(n, dtype=torch.uint8, device=device) for n in sizes]
    del held


def _bias(w2: Tensor, w3: Tensor, call: _Call) -> Tensor:
    if call.has_biases:
        return w2 + w3
    return torch.zeros(_GATES * call.layer.h, dtype=w2.dtype, device=w2.device)


def _layer_forward(
    x: Tensor, w2: Tensor, w3: Tensor, hx: Tensor, cx: Tensor, call: _Call, grad: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """`mkldnn_rnn_layer`: output, hy, cy, the summed bias, then (training) the workspace, then ideep's own."""
    layer = call.layer
    output = torch.empty((layer.t, layer.b, layer.h), dtype=x.dtype, device=x.device)
    hy = torch.empty(hx.shape, dtype=hx.dtype, device=hx.device)
    cy = torch.empty(cx.shape, dtype=cx.dtype, device=cx.device)
    bias = _bias(w2, w3, call)
    workspace = torch.empty(layer.workspace(), dtype=torch.uint8, device=x.device) if grad else None
    _kernel_buffers(layer.forward_buffers(grad, call.threads), x.device)
    del bias
    return output, hy, cy, workspace


def _contiguous_or_zeros(grad: Tensor | None, like: Tensor) -> Tensor:
    return grad.contiguous() if grad is not None else torch.zeros_like(like)


def _layer_backward(
    saved: Sequence[Tensor], grads: Sequence[Tensor | None], call: _Call
) -> tuple[Tensor, ...]:
    """`mkldnn_rnn_layer_backward`: grads made contiguous (or zeros), bias, the diffs, ideep's buffers."""
    x, w0, w1, w2, w3, hx, cx, output = saved[:8]
    grad_output = _contiguous_or_zeros(grads[0], output)
    grad_hy = _contiguous_or_zeros(grads[1], hx)
    grad_cy = _contiguous_or_zeros(grads[2], cx)
    bias = _bias(w2, w3, call)
    if hx.untyped_storage()._cdata == cx.untyped_storage()._cdata:
        cx = cx.clone()
    f32 = torch.float32
    diff_x = torch.empty(x.shape, dtype=f32, device=x.device)
    diff_hx = torch.empty(hx.shape, dtype=f32, device=x.device)
    diff_cx = torch.empty(cx.shape, dtype=f32, device=x.device)
    diff_w1 = torch.empty(w0.shape, dtype=f32, device=x.device)
    diff_w2 = torch.empty(w1.shape, dtype=f32, device=x.device)
    diff_b = torch.empty(bias.shape, dtype=f32, device=x.device)
    _kernel_buffers(call.layer.backward_buffers(), x.device)
    diff_b2 = diff_b.clone()
    del grad_output, grad_hy, grad_cy, bias
    return diff_x, diff_w1, diff_w2, diff_b, diff_b2, diff_hx, diff_cx


class _MkldnnRnnLayer(torch.autograd.Function):
    """One layer and direction; saves what `MkldnnRnnLayerBackward0` saves (inputs, outputs, workspace)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        w0: Tensor,
        w1: Tensor,
        w2: Tensor,
        w3: Tensor,
        hx: Tensor,
        cx: Tensor,
        call: _Call,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        output, hy, cy, workspace = _layer_forward(x, w2, w3, hx, cx, call, grad=True)
        assert workspace is not None
        ctx.save_for_backward(x, w0, w1, w2, w3, hx, cx, output, hy, cy, workspace)
        ctx.mark_non_differentiable(workspace)
        ctx.set_materialize_grads(False)
        ctx.call = call
        return output, hy, cy, workspace

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if all(g is None for g in grads[:3]):
            return (None,) * 8
        return (*_layer_backward(ctx.saved_tensors, grads, ctx.call), None)


def _run_layer(
    x: Tensor, w: Sequence[Tensor], w2: Tensor, w3: Tensor, hx: Tensor, cx: Tensor, call: _Call
) -> tuple[Tensor, Tensor, Tensor]:
    if torch.is_grad_enabled():
        output, hy, cy, _ = _MkldnnRnnLayer.apply(x, w[0], w[1], w2, w3, hx, cx, call)
    else:
        output, hy, cy, _ = _layer_forward(x, w2, w3, hx, cx, call, grad=False)
    return output, hy, cy


def _layer_biases(w: Sequence[Tensor], has_biases: bool) -> tuple[Tensor, Tensor]:
    """`mkldnn_rnn` passes zeros shaped like the weights when the LSTM has no biases."""
    if has_biases:
        return w[2], w[3]
    w3 = torch.zeros(
        w[1].shape, dtype=w[1].dtype, device=w[1].device
    )  # GCC evaluates arguments right to left
    return torch.zeros(w[0].shape, dtype=w[0].dtype, device=w[0].device), w3


@dataclass(frozen=True)
class _Lstm:
    """The non-tensor arguments of `_VF.lstm` (the unpacked overload)."""

    has_biases: bool
    num_layers: int
    dropout: float
    train: bool
    bidirectional: bool
    batch_first: bool

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1


def _mkldnn_rnn(
    x: Tensor, hx: Tensor, cx: Tensor, params: Sequence[Tensor], spec: _Lstm
) -> tuple[Tensor, ...]:
    """`mkldnn_rnn`: time-major contiguous input, one kernel per layer and direction, stacked hy/cy."""
    if spec.batch_first:
        x = x.transpose(0, 1)
    x = x.contiguous()
    hx, cx = hx.contiguous(), cx.contiguous()
    stride = 4 if spec.has_biases else 2
    threads = torch.get_num_threads()
    layer_input = x
    layer_output: list[Tensor] = []
    layer_hy: list[Tensor] = []
    layer_cy: list[Tensor] = []
    for layer in range(spec.num_layers):
        for direction in range(spec.directions):
            index = layer * spec.directions + direction
            w = params[index * stride : (index + 1) * stride]
            t, b, i = layer_input.shape
            call = _Call(Layer(t, b, i, hx.shape[2]), spec.has_biases, threads)
            output, hy, cy = _run_layer(
                layer_input, w, *_layer_biases(w, spec.has_biases), hx[index], cx[index], call
            )
            if len(layer_output) > direction:
                layer_output[direction] = output
            else:
                layer_output.append(output)
            layer_hy.append(hy)
            layer_cy.append(cy)
            del output, hy, cy
        layer_input = layer_output[0] if spec.directions == 1 else torch.cat(layer_output, -1)
        if spec.dropout != 0 and spec.train and layer < spec.num_layers - 1:
            layer_input = torch.dropout(layer_input, spec.dropout, True)
    hy_all, cy_all = torch.stack(layer_hy, 0), torch.stack(layer_cy, 0)
    output = layer_input.transpose(0, 1) if spec.batch_first else layer_input
    return output, hy_all, cy_all


# --------------------------------------------------------------------------- when PyTorch takes this path


def _uses_mkldnn(x: Tensor, hx: Sequence[Tensor], params: Sequence[Tensor]) -> bool:
    """`use_mkldnn` in aten/src/ATen/native/RNN.cpp, for meta tensors standing in for CPU ones (float32)."""
    tensors = [x, *hx, *params]
    return (
        torch.backends.mkldnn.is_available()
        and bool(torch.backends.mkldnn.enabled)
        and all(isinstance(t, Tensor) and t.device.type == "meta" for t in tensors)
        and x.dtype == torch.float32
        and all(t.dtype == torch.float32 for t in tensors)
        and x.numel() != 0
        and len(hx) == 2
        and x.dim() == 3
        and hx[0].shape[2] == hx[1].shape[2]  # no projections
    )


def _emulated_lstm(original: Any) -> Any:
    def lstm(*args: Any, **kwargs: Any) -> Any:
        if (
            kwargs or len(args) != 9 or isinstance(args[1], Tensor)
        ):  # packed sequences: (data, batch_sizes, ...)
            return original(*args, **kwargs)
        x, hx, params = args[0], args[1], args[2]
        if not _uses_mkldnn(x, hx, params):
            return original(*args, **kwargs)
        spec = _Lstm(bool(args[3]), int(args[4]), float(args[5]), bool(args[6]), bool(args[7]), bool(args[8]))
        return _mkldnn_rnn(x, hx[0], hx[1], params, spec)

    return lstm


@patch("cpu", "lstm")
@contextmanager
def lstm_patch() -> Iterator[None]:
    """While active, `torch._VF.lstm` on meta tensors allocates what the CPU's oneDNN LSTM allocates."""
    vf = torch._VF
    had = "lstm" in vf.__dict__
    original = vf.lstm
    vf.lstm = _emulated_lstm(original)
    try:
        yield
    finally:
        if had:
            vf.lstm = original
        else:
            del vf.lstm
