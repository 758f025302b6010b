"""Compatibility with libraries whose code reads tensor values unless it knows it is being traced.

Hugging Face transformers skips its data-dependent checks for fake tensors, as under torch.compile; a meta
tensor has no values either, so while simulating it counts as one, and the simulated ranks' fake tensors
are answered as meta ones. Two of those checks decide which
attention kernel runs, and tracing answers them the costly way (a materialised 4-D mask, key and value
repeated to the query heads). memtrace answers them as a real run of its inputs does: `position_ids` are one
sequence per row (`find_packed_sequence_indices` finds no packing) and an `attention_mask` holds ones (the
causal mask may be skipped), so SDPA gets `is_causal=True` and `enable_gqa`, as on the GPU. Measured: with
tracing's answers a Llama step came out 15% above an H200's measurement (benchmarks/results/h200-torch2.11).
Loaded only if transformers is already imported by the user's builder.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..core.registry import patch
from .tensors import simulated


def _on_meta(t: Any) -> bool:
    """A tensor without values as the simulation makes them: meta, or fake (the simulated ranks of
    `--ddp`/`--fsdp` run on fake CPU tensors, engine/distributed.py)."""
    return isinstance(t, torch.Tensor) and simulated(t)


def _answered(t: Any) -> bool:
    """A value-less tensor memtrace answers for: not inside a compiled region, where transformers' own
    answer is tracing's, in the real compiled run as in the simulated one (the packed-sequence mask kept,
    the causal mask never skipped: a materialised 4-D mask, key and value repeated; the CPU allocator's
    figure for a compiled HF Llama was 4% above a simulation that answered there)."""
    return _on_meta(t) and not torch.compiler.is_compiling()


def _no_packing(original: Callable[..., Any]) -> Callable[..., Any]:
    def find_packed_sequence_indices(position_ids: Any, *args: Any, **kwargs: Any) -> Any:
        return None if _answered(position_ids) else original(position_ids, *args, **kwargs)

    return find_packed_sequence_indices


def _ones_mask(original: Callable[..., Any]) -> Callable[..., Any]:
    def _ignore_causal_mask_sdpa(padding_mask: Any, *args: Any, **kwargs: Any) -> Any:
        return original(None if _answered(padding_mask) else padding_mask, *args, **kwargs)

    return _ignore_causal_mask_sdpa


@contextlib.contextmanager
def _swapped(
    module: Any, name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> Iterator[None]:
    original = getattr(module, name, None) if module is not None else None
    if original is None:
        yield
        return
    setattr(module, name, wrap(original))
    try:
        yield
    finally:
        setattr(module, name, original)


def _meta_is_fake(original: Callable[..., Any]) -> Callable[..., Any]:
    def is_fake_tensor(tensor: Any) -> bool:
        return bool(original(tensor)) or _on_meta(tensor)

    return is_fake_tensor


@contextlib.contextmanager
def _hf_meta_is_fake() -> Iterator[None]:
    masks = sys.modules.get("transformers.masking_utils")
    with (
        _swapped(sys.modules.get("transformers.utils.import_utils"), "is_fake_tensor", _meta_is_fake),
        _swapped(masks, "find_packed_sequence_indices", _no_packing),
        _swapped(masks, "_ignore_causal_mask_sdpa", _ones_mask),
    ):
        yield


patch("cpu", "hf_meta_is_fake")(_hf_meta_is_fake)
patch("cuda", "hf_meta_is_fake")(_hf_meta_is_fake)
