"""The CPU's native recurrent path (`_rnn_impl` in aten/src/ATen/native/RNN.cpp), op for op on meta tensors.

GRU, RNN, and the LSTMs oneDNN does not take (projections, float64/float16 training, packed sequences of
unequal lengths) run this path; its CPU branch computes the input projection of all timesteps in one gemm
where meta's decomposition goes step by step. `rnn.py` decides which path a call takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class RnnSpec:
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


def _layer(spec: RnnSpec, x: Tensor, hidden: Hidden, p: _Params) -> tuple[Tensor, Hidden]:
    if spec.batch_sizes is None:
        return _full_layer(spec.kind, x, hidden, p)
    return _packed_layer(spec.kind, x, spec.batch_sizes, hidden, p)


def _bidirectional_layer(
    spec: RnnSpec, x: Tensor, hidden: tuple[Hidden, Hidden], p: tuple[_Params, _Params]
) -> tuple[Tensor, tuple[Hidden, Hidden]]:
    if spec.batch_sizes is None:
        return _full_bidirectional_layer(spec.kind, x, hidden, p)
    fw = _packed_layer(spec.kind, x, spec.batch_sizes, hidden[0], p[0])
    rev = _reversed_packed_layer(spec.kind, x, spec.batch_sizes, hidden[1], p[1])
    return torch.cat([fw[0], rev[0]], -1), (fw[1], rev[1])


def _layer_stack(
    x: Tensor, hiddens: Sequence[Hidden], params: Sequence[_Params], spec: RnnSpec
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


def native_rnn(
    x: Tensor, hx: Sequence[Tensor], params: Sequence[Tensor], spec: RnnSpec
) -> tuple[Tensor, ...]:
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
