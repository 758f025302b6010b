"""The target device as the engine runs it: its workspace rules and kernel patches, loaded from `devices/`
and `meta/` (importing them registers them in `core/registry.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from ..core.registry import Workspace, patches_for, rules_for


class DeviceModel:
    """The target device: its name, its workspace rules and its kernel patches."""

    def __init__(self, name: str) -> None:
        if name not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {name!r} (cpu or cuda)")
        self.name = name
        _load_rules()
        self._rules = rules_for(name)

    def workspace(self, func: Any, args: Any, kwargs: Any, out: Any) -> Workspace | None:
        fn = self._rules.get(str(func))
        return fn(args, kwargs or {}, out) if fn is not None else None

    @contextmanager
    def patched(self) -> Iterator[None]:
        """All of this device's kernel patches, active together."""
        with ExitStack() as stack:
            for factory in patches_for(self.name):
                stack.enter_context(factory())
            yield


def _load_rules() -> None:
    from ..devices.cpu import (  # noqa: F401  (registering rules and patches)
        attention,
        blas,
        conv,
        gemm_lowp,
        loss,
        norm,
        rng,
        rnn,
    )
    from ..devices.cuda import attention as cuda_attention  # noqa: F401
    from ..devices.cuda import blas as cuda_blas  # noqa: F401
    from ..devices.cuda import conv as cuda_conv  # noqa: F401
    from ..devices.cuda import loss as cuda_loss  # noqa: F401
    from ..meta import autocast, compat, compat_nn, compat_torchvision, optim_meta  # noqa: F401
