"""Optimizers on meta parameters: the fused kernels (`fused=True`) allowed, as on the device simulated.

`torch.optim` refuses `fused=True` unless every parameter is on a device in
`torch.optim.optimizer._get_fused_kernels_supported_devices()`, which meta is not, so `adamw:fused=true` (what
nanoGPT and recent Hugging Face Trainers use on CUDA) failed. The fused kernels have meta registrations
(`torch/_meta_registrations.py`, `meta__fused_adam_`); on the device they update parameters, gradients'
consumers and state in place (`aten/src/ATen/native/cuda/fused_adam_impl.cu` through
`multi_tensor_apply_for_fused_optimizer`, `aten/src/ATen/native/FusedAdam.cpp` on the CPU) and allocate no
temporaries, and their `step` counters are float32 tensors on the parameters' device. While simulating, meta
counts as a supported device; construction (in memtrace's step or inside a user's `--step`) and `step()`
then run PyTorch's own fused code path; the same for `capturable=True` (step counters on the device).
`_fused_sgd_` and `_fused_adagrad_` (and the tensor-lr overloads) have no meta kernel in PyTorch: they
update in place and return nothing, so their meta kernel here does nothing. Held against the CPU allocator
in tests/test_optim_meta.py.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.optim.optimizer as optimizer_module

from ..core.registry import patch


def _with_meta(original: Any) -> Any:
    def supported(*args: Any, **kwargs: Any) -> list[str]:
        return [*original(*args, **kwargs), "meta"]

    return supported


@contextmanager
def fused_on_meta() -> Iterator[None]:
    """Meta counts as a device of the fused kernels, and of `capturable=True` (each optimizer module imports
    `_get_capturable_supported_devices` by name)."""
    owners = [(optimizer_module, "_get_fused_kernels_supported_devices")]
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("torch.optim.") and hasattr(
            module, "_get_capturable_supported_devices"
        ):
            owners.append((module, "_get_capturable_supported_devices"))
    saved = [(owner, name, getattr(owner, name)) for owner, name in owners]
    for owner, name, original in saved:
        setattr(owner, name, _with_meta(original))
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


_IN_PLACE = ("_fused_sgd_", "_fused_adagrad_", "_fused_adam_", "_fused_adamw_")
_LIBRARY: list[torch.library.Library] = []


def _nothing(*args: Any, **kwargs: Any) -> None:
    """An in-place fused step on meta tensors: no output, no allocation."""


def _register_meta_kernels() -> None:
    """Meta kernels for the in-place fused steps PyTorch has none for (registered once per process)."""
    if _LIBRARY:
        return
    lib = torch.library.Library("aten", "IMPL", "Meta")
    for name in _IN_PLACE:
        packet = getattr(torch.ops.aten, name)
        for overload in packet.overloads():
            op = getattr(packet, overload)
            if not torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "Meta"):
                lib.impl(f"{name}.{overload}" if overload != "default" else name, _nothing)
    _LIBRARY.append(lib)


@contextmanager
def _fused_steps() -> Iterator[None]:
    _register_meta_kernels()
    with fused_on_meta():
        yield


patch("cpu", "fused_optimizers")(_fused_steps)
patch("cuda", "fused_optimizers")(_fused_steps)
