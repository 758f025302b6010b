"""ATen kernels that CPU and CUDA run the same way, and what each allocates beyond its meta kernel.

- `F.scaled_dot_product_attention`: each device's patch swaps in its own kernel choice (`sdpa_replaced`).
- BLAS operands (`addmm_impl_cpu_`, CUDA's `prepare_matrix_for_cublas`): a matrix BLAS cannot read in place
  (row- or column-major with a leading dimension at least its size) is cloned contiguous inside the kernel,
  after the output exists, and freed when the kernel returns; the expanded (stride 0) gradient of `sum` is
  the common case.
- `mse_loss` with a reduction (aten/src/ATen/native/Loss.cpp, structured): `TORCH_META_FUNC(mse_loss)` builds
  a binary TensorIterator, which allocates the output at the broadcast shape of input and target, then
  `resize_({})` makes it a scalar and keeps the storage: the loss a step holds is as large as its input.
  `TORCH_IMPL_FUNC(mse_loss_out)` computes the squared error into a second tensor of that shape and reduces
  it into the output (`mean_out`; on the CPU a sum and an in-place division by a wrapped scalar, 8 + 4
  bytes), then frees it. PyTorch's Python meta kernel returns a 4-byte scalar. Held against the CPU
  allocator in tests/test_rules_loss.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..core.registry import Workspace


def installed_torch() -> tuple[int, int]:
    """(major, minor) of the PyTorch that runs: the version-dependent kernel rules follow it."""
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int(minor)


def blas_ready(t: torch.Tensor) -> bool:
    rows, cols = t.shape
    s0, s1 = t.stride()
    return ((s1 == 1 or cols == 1) and s0 >= max(1, cols)) or ((s0 == 1 or rows == 1) and s1 >= max(1, rows))


def operand_copies(*mats: Any) -> Workspace | None:
    """The contiguous copies of the operands BLAS cannot read, after the output."""
    needed = [m.numel() * m.element_size() for m in mats if isinstance(m, torch.Tensor) and not blas_ready(m)]
    if not needed:
        return None
    ws = Workspace()
    ws.outputs()
    for nbytes in needed:
        ws.alloc(nbytes)
    return ws


_MEAN = 1


def mse_loss(device: str, args: Any, kwargs: Any) -> Workspace | None:
    a, b = args[0], args[1]
    reduction = args[2] if len(args) > 2 else kwargs.get("reduction", _MEAN)
    if reduction == 0:
        return None
    nbytes = torch.broadcast_shapes(a.shape, b.shape).numel() * torch.promote_types(a.dtype, b.dtype).itemsize
    ws = Workspace(output_nbytes=nbytes)
    ws.outputs()
    ws.alloc(nbytes)
    if device == "cpu" and reduction == _MEAN:
        ws.alloc(8)  # div_'s wrapped scalar
        ws.alloc(4)
    return ws


SdpaFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class SdpaCall:
    """One `F.scaled_dot_product_attention` call on meta tensors, after autocast's cast, and the original
    function (the math path) to fall back to."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attn_mask: Any
    dropout_p: float
    is_causal: bool
    scale: Any
    enable_gqa: bool
    original: SdpaFn

    def fallback(self) -> torch.Tensor:
        return self.original(
            self.query,
            self.key,
            self.value,
            self.attn_mask,
            self.dropout_p,
            self.is_causal,
            scale=self.scale,
            enable_gqa=self.enable_gqa,
        )


def meta_sdpa(device: str, kernel: Callable[[SdpaCall], torch.Tensor]) -> Callable[[SdpaFn], SdpaFn]:
    """A replacement for SDPA: real tensors go to PyTorch's own function; meta tensors are cast as the
    device's autocast casts them (before the backend is chosen: the fused kernels bypass the dispatcher) and
    go to the device's `kernel`."""
    from ..meta.autocast import policy_cast
    from ..meta.tensors import simulated

    def wrap(original: SdpaFn) -> SdpaFn:
        inside = [False]

        def sdpa(
            query: torch.Tensor,
            key: torch.Tensor,
            value: torch.Tensor,
            attn_mask: Any = None,
            dropout_p: float = 0.0,
            is_causal: bool = False,
            scale: Any = None,
            enable_gqa: bool = False,
        ) -> torch.Tensor:
            call = SdpaCall(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, original)
            # A torch-function mode (a --step's routing, the known values') hands the C function's call back
            # to this replacement, which the module now holds: the call being made is the original's.
            if inside[0] or not simulated(query) or torch.compiler.is_compiling():
                return call.fallback()  # real, or traced by Dynamo (the compiled graph holds the aten op)
            q, k, v, mask = policy_cast(device, "scaled_dot_product_attention", query, key, value, attn_mask)
            inside[0] = True
            try:
                return kernel(SdpaCall(q, k, v, mask, dropout_p, is_causal, scale, enable_gqa, original))
            finally:
                inside[0] = False

        return sdpa

    return wrap


@contextmanager
def sdpa_replaced(wrap: Callable[[SdpaFn], SdpaFn]) -> Iterator[None]:
    """`F.scaled_dot_product_attention` (and its `torch._C._nn` twin) replaced by `wrap(original)`."""
    original = F.scaled_dot_product_attention
    wrapped = wrap(original)
    saved = (F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention)
    F.scaled_dot_product_attention = wrapped
    torch._C._nn.scaled_dot_product_attention = wrapped
    try:
        yield
    finally:
        F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention = saved


@contextmanager
def vf_swapped(kind: str, emulation: Callable[[Any], Any]) -> Iterator[None]:
    """`torch._VF.<kind>` (lstm, gru, rnn_tanh, rnn_relu) replaced by `emulation(original)` while the step
    runs: each device's RNN rule allocates what its own kernels allocate."""
    vf = torch._VF
    had = kind in vf.__dict__
    original = getattr(vf, kind)
    setattr(vf, kind, emulation(original))
    try:
        yield
    finally:
        if had:
            setattr(vf, kind, original)
        else:
            delattr(vf, kind)


def vf_arguments(kind: str, args: Sequence[Any]) -> tuple[Any, Any, Any, list[Any]] | None:
    """A `torch._VF` RNN call's arguments, either overload read alike: (input or packed data, batch sizes or
    None, hidden state (the LSTM's `(h, c)`), [params, has_biases, num_layers, dropout, train,
    bidirectional, batch_first]), batch_first False when packed; None for a call of another arity. Packed:
    `(data, batch_sizes, hx, params, ...)`, told from `(input, hx, params, ...)` by a tensor where the LSTM
    has its list of hidden states and the others their weights."""
    if len(args) != 9:
        return None
    if isinstance(args[1], torch.Tensor) and (kind == "lstm" or isinstance(args[2], torch.Tensor)):
        return args[0], args[1], args[2], [*args[3:], False]
    return args[0], None, args[1], list(args[2:])
