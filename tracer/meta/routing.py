"""A user's step written for a GPU, run where memtrace runs it.

While a `--step` function runs (and while its file is imported), `torch.autocast("cuda" | "cpu")` and
`GradScaler("cuda" | "cpu")` apply to the target device (the emulation on meta, or the CPU for the reference
run), and `.cuda()`, `.to("cuda")` and `device="cuda"` stay on the tensors' own device. Without this, on a
machine with no CUDA, PyTorch disables `autocast("cuda")` and `GradScaler("cuda")` with a warning and
`.cuda()` raises. Mentions of the CPU are left alone: optimizers keep their step counters there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_ROUTED = ("cuda", "cpu")


def _is_cuda(device: Any) -> bool:
    if isinstance(device, str):
        return device.split(":")[0] == "cuda"
    return isinstance(device, torch.device) and device.type == "cuda"


class _StayOn(TorchFunctionMode):
    """`.cuda()`, `.to("cuda")` and `device="cuda"` mean the tensors' own device (meta, or the CPU)."""

    def __init__(self, device: str, cpu_target: bool = False) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.cpu_target = cpu_target  # meta tensors stand for CPU ones: `.cpu()` of them is no copy

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda or (self.cpu_target and _to_cpu_of_meta(func, args, kwargs)):
            return args[0].to(self.device)
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = self.device
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], self.device, *args[2:])
        return func(*args, **kwargs)


def _to_cpu_of_meta(func: Any, args: Any, kwargs: dict[str, Any]) -> bool:
    """`t.cpu()`, `t.to("cpu")`, `t.to(device="cpu")` of a meta tensor."""
    if not args or not isinstance(args[0], torch.Tensor) or args[0].device.type != "meta":
        return False
    if func is torch.Tensor.cpu:
        return True
    dest = kwargs.get("device", args[1] if len(args) > 1 else None)
    return (
        func is torch.Tensor.to and isinstance(dest, str | torch.device) and torch.device(dest).type == "cpu"
    )


def _autocast_init(target: str, original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def init(self: Any, device_type: str, *args: Any, **kwargs: Any) -> None:
        original(self, target if device_type in _ROUTED else device_type, *args, **kwargs)

    return init


def _scaler_init(target: str, original: Callable[..., None]) -> Callable[..., None]:
    from .autocast import cuda_amp_allowed

    @functools.wraps(original)
    def init(self: Any, device: str = "cuda", *args: Any, **kwargs: Any) -> None:
        with cuda_amp_allowed():
            original(self, target if device in _ROUTED else device, *args, **kwargs)

    return init


def _maybe_opt_step(original: Callable[..., Any]) -> Callable[..., Any]:
    """On meta the scaler cannot read its inf check (`.item()`): the step is taken, as in the steady state."""

    @functools.wraps(original)
    def step(self: Any, optimizer: Any, optimizer_state: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        found = optimizer_state["found_inf_per_device"].values()
        if any(t.device.type == "meta" for t in found):
            return optimizer.step(*args, **kwargs)
        return original(self, optimizer, optimizer_state, *args, **kwargs)

    return step


@contextmanager
def _patched(owner: Any, attr: str, value: Any) -> Iterator[None]:
    saved = getattr(owner, attr)
    setattr(owner, attr, value)
    try:
        yield
    finally:
        setattr(owner, attr, saved)


def staying_on(device: str) -> AbstractContextManager[None]:
    """`.cuda()`, `.to("cuda")` and `device="cuda"` make tensors on `device` (a builder's, on meta)."""
    return _StayOn(device)


def routed_if(user_step: bool, target: str, tensors: str) -> AbstractContextManager[None]:
    """`routed(target, tensors)` around a user's step; memtrace's own step needs no routing."""
    return routed(target, tensors) if user_step else nullcontext()


@contextmanager
def routed(target: str, tensors: str) -> Iterator[None]:
    """Autocast and GradScaler apply to `target` ("cpu" or "cuda"); CUDA tensors are made on `tensors`."""
    from .autocast import caches_under_inference_mode

    caches_under_inference_mode()  # its probe runs a real CPU autocast: before "cpu" means the target
    autocast_cls = torch.amp.autocast_mode.autocast
    scaler_cls = torch.amp.grad_scaler.GradScaler
    with ExitStack() as stack:
        stack.enter_context(_patched(autocast_cls, "__init__", _autocast_init(target, autocast_cls.__init__)))
        stack.enter_context(_patched(scaler_cls, "__init__", _scaler_init(target, scaler_cls.__init__)))
        stack.enter_context(
            _patched(scaler_cls, "_maybe_opt_step", _maybe_opt_step(scaler_cls._maybe_opt_step))
        )
        stack.enter_context(_StayOn(tensors, cpu_target=target == "cpu" and tensors == "meta"))
        yield
