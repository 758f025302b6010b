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

oneDNN's bfloat16 LSTM (bf16 tensors, or float32 under CPU autocast, which casts each `mkldnn_rnn_layer`'s
arguments to bf16, the last first) is emulated where oneDNN runs its AVX-512-BF16 kernels (no AMX): its
brgemm forward in 2-byte elements, in training and inference, and its brgemm backward
(`rnn_onednn.rnn_bf16_backward`), checked live on such a CPU over batch, length, input and hidden sizes and
threads. Left to PyTorch's own meta decomposition: oneDNN's bf16 LSTM on other ISAs (AMX, AVX2-VNNI-2), its
float16 LSTM, double backward through the oneDNN LSTM, calls on real tensors.

Here: the emulated oneDNN kernels, which path a call takes, and the registered patches; oneDNN's buffer sizes
are in `rnn_onednn.py`, the native path in `rnn_native.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...core.registry import patch
from ..shared import vf_arguments, vf_swapped
from . import isa as cpu_isa
from .rnn_native import RnnSpec, native_rnn
from .rnn_onednn import GATES, Layer

__all__ = ["Layer", "gru_patch", "lstm_patch", "rnn_relu_patch", "rnn_tanh_patch"]


# --------------------------------------------------------------------------- the emulated kernels


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
    return torch.zeros(GATES * call.layer.h, dtype=w2.dtype, device=w2.device)


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
    # bf16: ideep takes the output gradients in float
    floats = [t.to(f32) for t in (grad_output, grad_hy, grad_cy)] if call.layer.bf16 else []
    _kernel_buffers(call.layer.backward_buffers(call.threads), x.device)
    diff_b2 = diff_b.clone()
    del floats, grad_output, grad_hy, grad_cy, bias
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
    x: Tensor, params: Sequence[Tensor], hx: Tensor, cx: Tensor, index: int, spec: RnnSpec
) -> tuple[Tensor, Tensor, Tensor]:
    """Layer and direction `index` of `mkldnn_rnn`: its weights, h0 and c0 rows, one kernel."""
    stride = 4 if spec.has_biases else 2
    w = list(params[index * stride : index * stride + 2])
    w2, w3 = _layer_biases(params[index * stride : (index + 1) * stride], spec.has_biases)
    h0, c0 = hx[index], cx[index]
    zeros = () if spec.has_biases else (w2, w3)  # `mkldnn_rnn`'s temporaries: alive through the layer
    if torch.is_autocast_enabled("cpu"):
        # autocast casts `mkldnn_rnn_layer`'s arguments to bf16, the last first: cx, hx, biases (the float
        # zeros where the LSTM has none), weights, x
        c0, h0 = _bf16(c0), _bf16(h0)
        w3, w2 = _bf16(w3), _bf16(w2)
        w = [_bf16(t) for t in reversed(w)][::-1]
        x = _bf16(x)
    t, b, i = x.shape
    layer = Layer(t, b, i, hx.shape[2], bf16=x.dtype == torch.bfloat16)
    call = _LayerCall(layer, spec.has_biases, torch.get_num_threads())
    out = _run_layer(x, w, w2, w3, h0, c0, call)
    del zeros
    return out


def _bf16(t: Tensor) -> Tensor:
    """Autocast's cast of one float32 argument (others pass as they are)."""
    if t.dtype != torch.float32:
        return t
    with torch.autocast("cpu", enabled=False):
        return t.to(torch.bfloat16)


def _mkldnn_rnn(
    x: Tensor, hx: Tensor, cx: Tensor, params: Sequence[Tensor], spec: RnnSpec
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


# --------------------------------------------------------------------------- when PyTorch takes which path


def _on_meta(tensors: Sequence[Any]) -> bool:
    return all(isinstance(t, Tensor) and t.device.type == "meta" for t in tensors)


def _bf16_modelled(dtype: torch.dtype) -> bool:
    """oneDNN's bf16 LSTM is emulated where oneDNN runs its AVX-512-BF16 kernels (`cpu_isa`)."""
    return dtype == torch.bfloat16 and cpu_isa.onednn_isa() == "avx512_core_bf16"


def _uses_mkldnn(x: Tensor, hx: Sequence[Tensor], params: Sequence[Tensor]) -> bool:
    """`use_mkldnn` in aten/src/ATen/native/RNN.cpp (meta standing in for CPU), and no projections;
    `mkldnn_bf16_device_check` / `_fp16_` as oneDNN's effective ISA (`cpu_isa`) decides them."""
    vnni2 = cpu_isa.onednn_isa() == "avx2_vnni_2"
    bf16 = x.dtype == torch.bfloat16 and (cpu_isa.onednn_isa_at_least("avx512_core") or vnni2)
    fp16 = x.dtype == torch.float16 and (cpu_isa.onednn_isa_at_least("avx512_core_fp16") or vnni2)
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
    spec: RnnSpec


def _parse(kind: str, args: Sequence[Any]) -> _Args | None:
    """Either overload, `(input, hx, params, flags, batch_first)` or `(data, batch_sizes, hx, params, flags)`;
    None when the call is not one to emulate (real tensors, unknown batch sizes)."""
    call = vf_arguments(kind, args)
    if call is None:
        return None
    x, sizes, hidden, rest = call
    batch_sizes = None
    if sizes is not None:
        if sizes.device.type != "cpu":
            return None
        batch_sizes = tuple(int(n) for n in sizes.tolist())
    hx, params = list(hidden) if kind == "lstm" else [hidden], list(rest[0])
    if not _on_meta([x, *hx, *params]) or x.dim() != (2 if sizes is not None else 3):
        return None
    flags = (bool(rest[1]), int(rest[2]), float(rest[3]), bool(rest[4]), bool(rest[5]), bool(rest[6]))
    return _Args(x, hx, params, RnnSpec(kind, *flags, batch_sizes))


def _uniform(batch_sizes: tuple[int, ...] | None) -> bool:
    """Unpacked, or packed with every sequence of full length (then the packed LSTM also runs oneDNN)."""
    return batch_sizes is None or all(n == batch_sizes[0] for n in batch_sizes)


def _mkldnn_packed(
    data: Tensor, hx: Sequence[Tensor], params: Sequence[Tensor], spec: RnnSpec
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
        autocast = kind == "lstm" and torch.is_autocast_enabled("cpu")
        if call is None or (autocast and not _bf16_modelled(torch.get_autocast_dtype("cpu"))):
            return original(*args, **kwargs)  # autocast's reduced-precision LSTM here: not emulated
        x, hx, params, spec = call.x, call.hx, call.params, call.spec
        if kind != "lstm" or not _uses_mkldnn(x, hx, params) or not _uniform(spec.batch_sizes):
            return native_rnn(x, hx, params, spec)
        dtypes = {t.dtype for t in [x, *hx, *params]}
        if dtypes != {torch.float32} and not (dtypes == {torch.bfloat16} and _bf16_modelled(torch.bfloat16)):
            return original(*args, **kwargs)  # oneDNN's reduced-precision LSTM here: not emulated
        if spec.batch_sizes is None:
            return _mkldnn_rnn(x, hx[0], hx[1], params, spec)
        return _mkldnn_packed(x, hx, params, spec)

    return rnn


def _swap_vf(kind: str) -> AbstractContextManager[None]:
    return vf_swapped(kind, lambda original: _emulation(kind, original))


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
