"""Composite torch.nn functions that take another branch under the recorder's dispatch mode, or cannot run on
meta at all, made to run on meta as they run on the device.

- `F.linear` with a bias on an N-D input that is not flattened into one `addmm` (a permuted, non-contiguous
  input, as in ConvNeXt's blocks): ATen's `linear` runs `matmul` and then adds the bias in place
  (`output.add_(bias)`), but under any Python dispatch mode `isTensorSubclassLike(bias)` is true and it adds
  out of place, one more output-sized buffer. The patch runs ATen's plain branch on meta tensors.
- `pack_padded_sequence` needs its lengths on the CPU (it reads them). Lengths given as a meta tensor (an
  input of the model) have no values: the simulation packs every sequence at full length, the worst case,
  and `tracer/engine/prepare.py` says so in a note. Lengths on the CPU (a list, a CPU tensor) are used as
  they are.
  `nn.utils.rnn.pad_packed_sequence` of such an unsorted pack reorders its output on meta.

A tensor subclass that overrides `F.linear` through `__torch_function__` (torchao's quantized weights)
is handed the original function, the key its table of overrides has.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ..core.registry import patch

Linear = Callable[..., torch.Tensor]


def _fusable(bias: torch.Tensor) -> bool:
    """ATen's `is_bias_likely_fusable` (Linear.cpp): a 1-D (after squeeze) contiguous bias."""
    return (bias.dim() == 1 or bias.squeeze().dim() == 1) and bias.is_contiguous()


def _adds_bias_after_matmul(x: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ATen's `linear` reaches its last branch, `matmul` then the bias added (Linear.cpp, torch 2.x):
    not 2-D (`addmm`), not a contiguous input with a fusable bias (`_flatten_nd_linear`, one `addmm` on a
    flattened view), not a non-contiguous one flattened because TORCH_LINEAR_FLATTEN_3D asks for it."""
    if bias is None or x.dim() == 2 or x.is_mkldnn:
        return False
    flattened = x.is_contiguous() or os.environ.get("TORCH_LINEAR_FLATTEN_3D") == "1"
    return not (_fusable(bias) and flattened)


def _plain_linear(device: str, original: Linear) -> Linear:
    def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return original(x, weight, bias)  # traced by Dynamo: the graph holds linear, as compiled
        if torch.overrides.has_torch_function_variadic(x, weight, bias):
            # a tensor subclass's own linear (torchao's quantized weights) is keyed by the original function
            return torch.overrides.handle_torch_function(original, (x, weight, bias), x, weight, bias)
        if x.device.type != "meta" or not _adds_bias_after_matmul(x, bias):
            return original(x, weight, bias)
        from .autocast import _NO_AUTOCAST, policy_cast

        # autocast casts linear's arguments once, then the kernel runs below the autocast key and asks the
        # contiguity of the cast input (`_to_copy` keeps a dense input's strides; a sliced view's copy is
        # contiguous)
        x, weight, bias = policy_cast(device, "linear", x, weight, bias)
        if not _adds_bias_after_matmul(x, bias):
            return original(x, weight, bias)  # already cast: autocast passes them on as they are
        with torch._C._ExcludeDispatchKeyGuard(_NO_AUTOCAST):
            out = torch.matmul(x, weight.t())
            return out.add_(bias)  # what ATen does for plain tensors

    return linear


def _linear_patch(device: str) -> Callable[[], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def swap() -> Iterator[None]:
        saved = (F.linear, torch._C._nn.linear)
        wrapped = _plain_linear(device, saved[1])
        F.linear = torch._C._nn.linear = wrapped
        try:
            yield
        finally:
            F.linear, torch._C._nn.linear = saved

    return swap


patch("cpu", "linear_bias_in_place")(_linear_patch("cpu"))
patch("cuda", "linear_bias_in_place")(_linear_patch("cuda"))


class FullLengthPacks:
    """How many `pack_padded_sequence` calls got meta lengths and packed at full length (the worst case)."""

    count = 0


def _full_lengths(x: torch.Tensor, lengths: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """Lengths without values: every sequence as long as the padded input."""
    FullLengthPacks.count += 1
    steps = x.size(1 if batch_first else 0)
    return torch.full((lengths.numel(),), steps, dtype=torch.int64, device="cpu")


@contextlib.contextmanager
def _lengths_on_cpu() -> Iterator[None]:
    """`torch._VF._pack_padded_sequence` (what `pack_padded_sequence` calls) accepts meta lengths."""
    vf: Any = torch._VF
    had = "_pack_padded_sequence" in vf.__dict__
    original = vf._pack_padded_sequence

    def pack(x: torch.Tensor, lengths: torch.Tensor, batch_first: bool) -> Any:
        if isinstance(lengths, torch.Tensor) and lengths.device.type == "meta":
            lengths = _full_lengths(x, lengths, batch_first)
        return original(x, lengths, batch_first)

    vf._pack_padded_sequence = pack
    try:
        yield
    finally:
        if had:
            vf._pack_padded_sequence = original
        else:
            delattr(vf, "_pack_padded_sequence")


patch("cpu", "pack_padded_lengths")(_lengths_on_cpu)
patch("cuda", "pack_padded_lengths")(_lengths_on_cpu)


def _pad_packed(original: Callable[..., Any]) -> Callable[..., Any]:
    """`pad_packed_sequence` of an unsorted pack on meta: the permutation back is a meta tensor, which
    PyTorch moves to the CPU to reorder the lengths. Pad the sorted pack, then reorder the padded output on
    meta as PyTorch does; the lengths stay in sorted order (equal anyway when packed at full length)."""

    def pad(sequence: Any, *args: Any, **kwargs: Any) -> Any:
        order = sequence.unsorted_indices
        if order is None or order.device.type != "meta":
            return original(sequence, *args, **kwargs)
        sorted_pack = sequence._replace(sorted_indices=None, unsorted_indices=None)
        padded, lengths = original(sorted_pack, *args, **kwargs)
        batch_first = kwargs.get("batch_first", args[0] if args else False)
        return padded.index_select(0 if batch_first else 1, order), lengths

    return pad


@contextlib.contextmanager
def _pad_packed_on_meta() -> Iterator[None]:
    """Called as `nn.utils.rnn.pad_packed_sequence` (a name imported before the simulation is not patched)."""
    rnn = torch.nn.utils.rnn
    original = rnn.pad_packed_sequence
    rnn.pad_packed_sequence = _pad_packed(original)
    try:
        yield
    finally:
        rnn.pad_packed_sequence = original


patch("cpu", "pad_packed_meta_order")(_pad_packed_on_meta)
patch("cuda", "pad_packed_meta_order")(_pad_packed_on_meta)
