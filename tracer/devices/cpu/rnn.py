"""The CPU's recurrent kernels (`nn.LSTM`, `nn.GRU`, `nn.RNN`), emulated on meta tensors.

On a real CPU `aten::lstm` does not run the cell ops meta decomposes it into: with float32 tensors and oneDNN
available it runs `mkldnn_rnn` (aten/src/ATen/native/mkldnn/RNN.cpp), one `mkldnn_rnn_layer` per layer and
direction, each allocating its outputs, the summed bias, a oneDNN workspace that autograd saves for backward,
and (inside ideep) weight reorders and a scratchpad; `mkldnn_rnn_layer_backward` allocates the gradients plus
its own reorders, zeroed diff-weight buffers and scratchpad. The other recurrent paths (GRU, RNN, LSTM with
projections or in float64/float16 training, packed sequences of unequal lengths) run RNN.cpp's `_rnn_impl`,
whose CPU branch computes the input projection of all timesteps in one gemm where meta goes step by step.

While the patches are active, `torch._VF.lstm/gru/rnn_tanh/rnn_relu` (what the modules call) are replaced by
emulations that, for meta tensors, run what the CPU runs: the oneDNN kernels as meta allocations of the same
sizes in the same order, with a per-layer `torch.autograd.Function` saving what `MkldnnRnnLayerBackward0`
saves, and the native path op for op. oneDNN's buffer sizes follow oneDNN v3.x (src/cpu/rnn/rnn_utils.*,
ref_rnn.cpp, x64/rnn/rnn_brgemm_utils.cpp): training uses the reference implementation with gemm-friendly
leading dimensions; float32 inference uses the brgemm implementation (blocked weights, 32 output channels per
block on AVX-512).

The sizes assume oneDNN's x86 kernels at AVX2 or above (`cpu_isa`); below AVX2 (ONEDNN_MAX_CPU_ISA=SSE41)
and off x86 (aarch64) oneDNN runs other kernels, whose buffers are not modelled.

Left to PyTorch's own meta decomposition: oneDNN's bfloat16/float16 LSTM (also under CPU autocast), double
backward through the oneDNN LSTM, calls on real tensors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core.registry import patch
from . import isa as cpu_isa

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
        """Weights (k inputs) in oneDNN's forward layout: k rows of good_ld(4H) (size-1 dims: no stride)."""
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
    """brgemm's output-channel block for float32 LSTM: 2 vectors, 4 on AVX2 with a batch of one.

    The vectors are oneDNN's (`brgemm_calc_isa`: avx512_core where it may use it, else avx2), not ATen's:
    ATEN_CPU_CAPABILITY does not lower them, ONEDNN_MAX_CPU_ISA does.
    """
    if cpu_isa.mayiuse("avx512_core"):
        return 32
    return 32 if batch == 1 else 16


# --------------------------------------------------------------------------- the emulated kernels


@dataclass(frozen=True)
class _Rnn:
    """The non-tensor arguments of `_VF.lstm/gru/rnn_tanh/rnn_relu`, either overload."""

    kind: str
    has_biases: bool
    num_layers: int
    dropout: float
    train: bool
    bidirectional: bool
    batch_first: bool
    batch_sizes: tuple[int, ...] | None = None  # a packed sequence's batch size per timestep

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def dropout_after(self, layer: int) -> bool:
        return self.dropout != 0 and self.train and layer < self.num_layers - 1


@dataclass(frozen=True)
class _LayerCall:
    """The non-tensor arguments of one `mkldnn_rnn_layer` call."""

    layer: Layer
    has_biases: bool
    threads: int


def _kernel_buffers(sizes: Sequence[int], device: torch.device) -> None:
    """Buffers a kernel allocates in order and frees before it returns (ideep reorders, scratchpad)."""
    held = [torch.empty(n, dtype=torch.uint8, device=device) for n in sizes]
    del held


def _bias(w2: Tensor, w3: Tensor, call: _LayerCall) -> Tensor:
    if call.has_biases:
        return w2 + w3
    return torch.zeros(_GATES * call.layer.h, dtype=w2.dtype, device=w2.device)


def _layer_forward(
    x: Tensor, w2: Tensor, w3: Tensor, hx: Tensor, cx: Tensor, call: _LayerCall, grad: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """`mkldnn_rnn_layer`: output, hy, cy, the summed bias, (training) the workspace, then ideep's buffers."""
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
    saved: Sequence[Tensor], grads: Sequence[Tensor | None], call: _LayerCall
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
        call: _LayerCall,
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
    x: Tensor, w: Sequence[Tensor], w2: Tensor, w3: Tensor, hx: Tensor, cx: Tensor, call: _LayerCall
) -> tuple[Tensor, Tensor, Tensor]:
    if torch.is_grad_enabled():
        output, hy, cy, _ = _MkldnnRnnLayer.apply(x, w[0], w[1], w2, w3, hx, cx, call)
    else:
        output, hy, cy, _ = _layer_forward(x, w2, w3, hx, cx, call, grad=False)
    return output, hy, cy


def _layer_biases(w: Sequence[Tensor], has_biases: bool) -> tuple[Tensor, Tensor]:
    """`mkldnn_rnn` passes zeros shaped like the weights when the LSTM has no biases (GCC evaluates call
    arguments right to left: the second first)."""
    if has_biases:
        return w[2], w[3]
    w3 = torch.zeros_like(w[1])
    return torch.zeros_like(w[0]), w3


def _mkldnn_layer(
    x: Tensor, params: Sequence[Tensor], hx: Tensor, cx: Tensor, index: int, spec: _Rnn
) -> tuple[Tensor, Tensor, Tensor]:
    """Layer and direction `index` of `mkldnn_rnn`: its weights, h0 and c0 rows, one kernel."""
    stride = 4 if spec.has_biases else 2
    w = params[index * stride : (index + 1) * stride]
    t, b, i = x.shape
    call = _LayerCall(Layer(t, b, i, hx.shape[2]), spec.has_biases, torch.get_num_threads())
    return _run_layer(x, w, *_layer_biases(w, spec.has_biases), hx[index], cx[index], call)


def _mkldnn_rnn(
    x: Tensor, hx: Tensor, cx: Tensor, params: Sequence[Tensor], spec: _Rnn
) -> tuple[Tensor, ...]:
    """`mkldnn_rnn`: time-major contiguous input, one kernel per layer and direction, stacked hy/cy."""
    if spec.batch_first:
        x = x.transpose(0, 1)
    x = x.contiguous()
    hx, cx = hx.contiguous(), cx.contiguous()
    layer_input = x
    layer_output: list[Tensor] = []  # per direction, replaced (and so released) layer by layer
    layer_hy: list[Tensor] = []
    layer_cy: list[Tensor] = []
    for layer in range(spec.num_layers):
        for direction in range(spec.directions):
            output, hy, cy = _mkldnn_layer(
                layer_input, params, hx, cx, layer * spec.directions + direction, spec
            )
            if direction < len(layer_output):
                layer_output[direction] = output
            else:
                layer_output.append(output)
            layer_hy.append(hy)
            layer_cy.append(cy)
            del output, hy, cy
        layer_input = layer_output[0] if spec.directions == 1 else torch.cat(layer_output, -1)
        if spec.dropout_after(layer):
            layer_input = torch.dropout(layer_input, spec.dropout, True)
    hy_all, cy_all = torch.stack(layer_hy, 0), torch.stack(layer_cy, 0)
    output = layer_input.transpose(0, 1) if spec.batch_first else layer_input
    return output, hy_all, cy_all


# --------------------------------------------------------------------------- the native path (GRU, RNN, ...)


def _linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """`at::linear` as on real tensors: a non-contiguous input (the batch-first transpose) takes matmul and an
    in-place `add_` (under a dispatch mode `isTensorSubclassLike` holds and ATen adds out of place)."""
    if b is None or x.dim() == 2 or x.is_contiguous():
        return F.linear(x, w, b)
    return torch.matmul(x, w.t()).add_(b)


@dataclass(frozen=True)
class _Params:
    """`CellParams`: one layer and direction's weights (biases and projection may be absent)."""

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None
    w_hr: Tensor | None

    def linear_ih(self, x: Tensor) -> Tensor:
        return _linear(x, self.w_ih, self.b_ih)

    def linear_hh(self, h: Tensor) -> Tensor:
        return _linear(h, self.w_hh, self.b_hh)

    def matmul_hr(self, h: Tensor) -> Tensor:
        return h if self.w_hr is None else torch.matmul(h, self.w_hr.t())


def _gather_params(params: Sequence[Tensor], has_biases: bool, has_projections: bool) -> list[_Params]:
    stride = 2 + 2 * has_biases + has_projections
    out = []
    for k in range(0, len(params), stride):
        w = params[k : k + stride]
        b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
        out.append(_Params(w[0], w[1], b_ih, b_hh, w[-1] if has_projections else None))
    return out


Hidden = Tensor | tuple[Tensor, Tensor]


def _gru_cell(x: Tensor, hidden: Tensor, p: _Params) -> Tensor:
    igates = x.unsafe_chunk(3, 1)
    hgates = p.linear_hh(hidden).unsafe_chunk(3, 1)
    reset_gate = hgates[0].add_(igates[0]).sigmoid_()
    input_gate = hgates[1].add_(igates[1]).sigmoid_()
    new_gate = igates[2].add(hgates[2].mul_(reset_gate)).tanh_()
    return (hidden - new_gate).mul_(input_gate).add_(new_gate)


def _lstm_cell(x: Tensor, hidden: tuple[Tensor, Tensor], p: _Params) -> tuple[Tensor, Tensor]:
    hx, cx = hidden
    gates = p.linear_hh(hx).add_(x).unsafe_chunk(4, 1)
    ingate, forgetgate = gates[0].sigmoid_(), gates[1].sigmoid_()
    cellgate, outgate = gates[2].tanh_(), gates[3].sigmoid_()
    cy = (forgetgate * cx).add_(ingate * cellgate)
    hy = outgate * cy.tanh()
    return p.matmul_hr(hy), cy


def _cell(kind: str, x: Tensor, hidden: Hidden, p: _Params) -> Hidden:
    """One step of RNN.cpp's cells, with the input projection already computed (the CPU path)."""
    if kind == "lstm":
        assert isinstance(hidden, tuple)
        return _lstm_cell(x, hidden, p)
    assert isinstance(hidden, Tensor)
    if kind == "gru":
        return _gru_cell(x, hidden, p)
    gates = p.linear_hh(hidden).add_(x)
    return torch.tanh(gates) if kind == "rnn_tanh" else torch.relu(gates)


def _as_output(hidden: Hidden) -> Tensor:
    return hidden[0] if isinstance(hidden, tuple) else hidden


def _steps(kind: str, inputs: Sequence[Tensor], hidden: Hidden, p: _Params) -> tuple[list[Tensor], Hidden]:
    outputs = []
    for x in inputs:
        hidden = _cell(kind, x, hidden, p)
        outputs.append(_as_output(hidden))
    return outputs, hidden


def _full_layer(kind: str, x: Tensor, hidden: Hidden, p: _Params) -> tuple[Tensor, Hidden]:
    """`FullLayer` on the CPU: the input projection of every timestep in one gemm, then the cells."""
    inputs_w = p.linear_ih(x)
    outputs, final = _steps(kind, inputs_w.unbind(0), hidden, p)
    return torch.stack(outputs, 0), final


def _full_bidirectional_layer(
    kind: str, x: Tensor, hidden: tuple[Hidden, Hidden], p: tuple[_Params, _Params]
) -> tuple[Tensor, tuple[Hidden, Hidden]]:
    """`FullBidirectionalLayer` on the CPU."""
    input_w = p[0].linear_ih(x)
    step_inputs = input_w.unbind(0)
    fw_outputs, fw_final = _steps(kind, step_inputs, hidden[0], p[0])
    fw_output = torch.stack(fw_outputs, 0)
    input_w = p[1].linear_ih(x)
    step_inputs = input_w.unbind(0)
    rev_outputs, rev_final = _steps(kind, step_inputs[::-1], hidden[1], p[1])
    rev_output = torch.stack(rev_outputs[::-1], 0)
    return torch.cat([fw_output, rev_output], fw_output.dim() - 1), (fw_final, rev_final)


def _hidden_slice(hidden: Hidden, start: int, end: int) -> Hidden:
    if isinstance(hidden, tuple):
        return hidden[0].narrow(0, start, end - start), hidden[1].narrow(0, start, end - start)
    return hidden.narrow(0, start, end - start)


def _hidden_concat(hiddens: Sequence[Hidden]) -> Hidden:
    if all(isinstance(h, Tensor) for h in hiddens):
        return torch.cat([h for h in hiddens if isinstance(h, Tensor)], 0)
    pairs = [h for h in hiddens if isinstance(h, tuple)]
    c = torch.cat([c for _, c in pairs], 0)  # GCC evaluates make_tuple's arguments right to left
    return torch.cat([h for h, _ in pairs], 0), c


def _packed_layer(
    kind: str, data: Tensor, sizes: Sequence[int], hidden: Hidden, p: _Params
) -> tuple[Tensor, Hidden]:
    """`PackedLayer` on the CPU: the batch shrinks over time, finished sequences' hiddens are set aside."""
    input_w = p.linear_ih(data)
    outputs: list[Tensor] = []
    done: list[Hidden] = []
    offset, last = 0, sizes[0]
    for size in sizes:
        step_input = input_w.narrow(0, offset, size)
        offset += size
        if last > size:
            done.append(_hidden_slice(hidden, size, last))
            hidden = _hidden_slice(hidden, 0, size)
        last = size
        hidden = _cell(kind, step_input, hidden, p)
        outputs.append(_as_output(hidden))
    done.append(hidden)
    return torch.cat(outputs, 0), _hidden_concat(done[::-1])


def _reversed_packed_layer(
    kind: str, data: Tensor, sizes: Sequence[int], initial: Hidden, p: _Params
) -> tuple[Tensor, Hidden]:
    """`ReversedPackedLayer` on the CPU: from the last timestep back, the batch grows."""
    input_w = p.linear_ih(data)
    outputs: list[Tensor] = []
    offset, last = data.shape[0], sizes[-1]
    hidden = _hidden_slice(initial, 0, last)
    for size in reversed(sizes):
        if size > last:
            hidden = _hidden_concat([hidden, _hidden_slice(initial, last, size)])
        step_input = input_w.narrow(0, offset - size, size)
        offset -= size
        last = size
        hidden = _cell(kind, step_input, hidden, p)
        outputs.append(_as_output(hidden))
    return torch.cat(outputs[::-1], 0), hidden


def _layer(spec: _Rnn, x: Tensor, hidden: Hidden, p: _Params) -> tuple[Tensor, Hidden]:
    if spec.batch_sizes is None:
        return _full_layer(spec.kind, x, hidden, p)
    return _packed_layer(spec.kind, x, spec.batch_sizes, hidden, p)


def _bidirectional_layer(
    spec: _Rnn, x: Tensor, hidden: tuple[Hidden, Hidden], p: tuple[_Params, _Params]
) -> tuple[Tensor, tuple[Hidden, Hidden]]:
    if spec.batch_sizes is None:
        return _full_bidirectional_layer(spec.kind, x, hidden, p)
    fw = _packed_layer(spec.kind, x, spec.batch_sizes, hidden[0], p[0])
    rev = _reversed_packed_layer(spec.kind, x, spec.batch_sizes, hidden[1], p[1])
    return torch.cat([fw[0], rev[0]], -1), (fw[1], rev[1])


def _layer_stack(
    x: Tensor, hiddens: Sequence[Hidden], params: Sequence[_Params], spec: _Rnn
) -> tuple[Tensor, list[Hidden]]:
    """`apply_layer_stack` over (bidirectional) full or packed layers: the output and the final hiddens."""
    layer_input = x
    finals: list[Hidden] = []
    for layer in range(spec.num_layers):
        if spec.bidirectional:
            pair = (hiddens[2 * layer], hiddens[2 * layer + 1])
            output, final = _bidirectional_layer(
                spec, layer_input, pair, (params[2 * layer], params[2 * layer + 1])
            )
            finals.extend(final)
        else:
            output, last = _layer(spec, layer_input, hiddens[layer], params[layer])
            finals.append(last)
        layer_input = output
        del output
        if spec.dropout_after(layer):
            layer_input = torch.dropout(layer_input, spec.dropout, True)
    return layer_input, finals


def _stack_finals(finals: Sequence[Hidden]) -> tuple[Tensor, ...]:
    """The final hidden states stacked over layers: (hy,) or, for an LSTM, (hy, cy)."""
    if all(isinstance(f, Tensor) for f in finals):
        return (torch.stack([f for f in finals if isinstance(f, Tensor)], 0),)
    pairs = [f for f in finals if isinstance(f, tuple)]
    cy = torch.stack([c for _, c in pairs], 0)  # GCC evaluates make_tuple's arguments right to left
    return torch.stack([h for h, _ in pairs], 0), cy


def _native_rnn(x: Tensor, hx: Sequence[Tensor], params: Sequence[Tensor], spec: _Rnn) -> tuple[Tensor, ...]:
    """`at::lstm/gru/rnn_*` without cuDNN or oneDNN: RNN.cpp's `_rnn_impl` as it runs on the CPU."""
    if spec.batch_first:
        x = x.transpose(0, 1)
    projections = spec.kind == "lstm" and hx[0].shape[2] != hx[1].shape[2]
    cells = _gather_params(params, spec.has_biases, projections)
    if spec.kind == "lstm":
        hiddens: list[Hidden] = list(zip(hx[0].unbind(0), hx[1].unbind(0), strict=True))
    else:
        hiddens = list(hx[0].unbind(0))
    output, finals = _layer_stack(x, hiddens, cells, spec)
    stacked = _stack_finals(finals)
    if spec.batch_first:
        output = output.transpose(0, 1)
    return (output, *stacked)


# --------------------------------------------------------------------------- when PyTorch takes which path


def _on_meta(tensors: Sequence[Any]) -> bool:
    return all(isinstance(t, Tensor) and t.device.type == "meta" for t in tensors)


def _uses_mkldnn(x: Tensor, hx: Sequence[Tensor], params: Sequence[Tensor]) -> bool:
    """`use_mkldnn` in aten/src/ATen/native/RNN.cpp (meta standing in for CPU), and no projections."""
    bf16 = x.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    fp16 = x.dtype == torch.float16 and torch.ops.mkldnn._is_mkldnn_fp16_supported()
    reduced = bf16 or (fp16 and not torch.is_grad_enabled())
    return (
        torch.backends.mkldnn.is_available()
        and bool(torch.backends.mkldnn.enabled)
        and (x.dtype == torch.float32 or reduced)
        and x.numel() != 0
        and hx[0].shape[2] == hx[1].shape[2]
    )


@dataclass(frozen=True)
class _Args:
    """A `_VF` RNN call: input (or packed data), hidden state(s), flat weights, flags."""

    x: Tensor
    hx: list[Tensor]
    params: list[Tensor]
    spec: _Rnn


def _parse(kind: str, args: Sequence[Any]) -> _Args | None:
    """Either overload, `(input, hx, params, flags, batch_first)` or `(data, batch_sizes, hx, params, flags)`;
    None when the call is not one to emulate (real tensors, unknown batch sizes)."""
    if len(args) != 9:
        return None
    packed = isinstance(args[1 if kind == "lstm" else 2], Tensor)
    batch_sizes = None
    if packed:
        if args[1].device.type != "cpu":
            return None
        batch_sizes = tuple(int(n) for n in args[1].tolist())
        args = [args[0], *args[2:], False]
    x, hx, params = args[0], list(args[1]) if kind == "lstm" else [args[1]], list(args[2])
    if not _on_meta([x, *hx, *params]) or x.dim() != (2 if packed else 3):
        return None
    flags = (bool(args[3]), int(args[4]), float(args[5]), bool(args[6]), bool(args[7]), bool(args[8]))
    return _Args(x, hx, params, _Rnn(kind, *flags, batch_sizes))


def _uniform(batch_sizes: tuple[int, ...] | None) -> bool:
    """Unpacked, or packed with every sequence of full length (then the packed LSTM also runs oneDNN)."""
    return batch_sizes is None or all(n == batch_sizes[0] for n in batch_sizes)


def _mkldnn_packed(
    data: Tensor, hx: Sequence[Tensor], params: Sequence[Tensor], spec: _Rnn
) -> tuple[Tensor, ...]:
    """A packed sequence of equal lengths: its data viewed as (T, B, input) through the oneDNN LSTM."""
    assert spec.batch_sizes is not None
    x = data.view(len(spec.batch_sizes), spec.batch_sizes[0], data.shape[1])
    output, hy, cy = _mkldnn_rnn(x, hx[0], hx[1], params, spec)
    return output.view(-1, output.shape[2]), hy, cy


def _emulation(kind: str, original: Any) -> Any:
    """A drop-in for `_VF.<kind>` that emulates the CPU on meta tensors and calls `original` otherwise."""

    def rnn(*args: Any, **kwargs: Any) -> Any:
        call = None if kwargs else _parse(kind, args)
        if call is None or (kind == "lstm" and torch.is_autocast_enabled("cpu")):
            return original(*args, **kwargs)  # autocast runs the LSTM in bfloat16: not emulated
        x, hx, params, spec = call.x, call.hx, call.params, call.spec
        if kind != "lstm" or not _uses_mkldnn(x, hx, params) or not _uniform(spec.batch_sizes):
            return _native_rnn(x, hx, params, spec)
        if any(t.dtype != torch.float32 for t in [x, *hx, *params]):
            return original(*args, **kwargs)  # oneDNN's reduced-precision LSTM: not emulated
        if spec.batch_sizes is None:
            return _mkldnn_rnn(x, hx[0], hx[1], params, spec)
        return _mkldnn_packed(x, hx, params, spec)

    return rnn


@contextmanager
def _swap_vf(kind: str) -> Iterator[None]:
    vf = torch._VF
    had = kind in vf.__dict__
    original = getattr(vf, kind)
    setattr(vf, kind, _emulation(kind, original))
    try:
        yield
    finally:
        if had:
            setattr(vf, kind, original)
        else:
            delattr(vf, kind)


@patch("cpu", "lstm")
def lstm_patch() -> AbstractContextManager[None]:
    """`torch._VF.lstm` on meta tensors allocates what the CPU's oneDNN (or native) LSTM allocates."""
    return _swap_vf("lstm")


@patch("cpu", "gru")
def gru_patch() -> AbstractContextManager[None]:
    """`torch._VF.gru` on meta tensors: the CPU's native GRU (input projection for all timesteps at once)."""
    return _swap_vf("gru")


@patch("cpu", "rnn_tanh")
def rnn_tanh_patch() -> AbstractContextManager[None]:
    return _swap_vf("rnn_tanh")


@patch("cpu", "rnn_relu")
def rnn_relu_patch() -> AbstractContextManager[None]:
    return _swap_vf("rnn_relu")
