"""The target device as the engine runs it: its workspace rules and kernel patches, loaded from `devices/`
and `meta/` (importing them registers them in `core/registry.py`).

The rules are looked up by the op object the dispatcher hands over (a dict keyed by `OpOverload`). Optional
ops (`optional("torchvision::roi_align.default")`) are resolved here, when the rules load: one that resolves
joins the table (a duplicate refused), one that does not is skipped and listed by `skipped_optional_ops`
(and `memtrace --version --verbose`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch._ops import OpOverload

from ..core.registry import OptionalOp, Workspace, WorkspaceRule, patches_for, rules_for

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class SkippedOp:
    """An optional op that did not resolve on this installation, and why."""

    device: str
    name: str
    reason: str


class DeviceModel:
    """The target device: its name, its workspace rules and its kernel patches."""

    def __init__(self, name: str) -> None:
        if name not in DEVICES:
            raise ValueError(f"unknown device {name!r} (cpu or cuda)")
        self.name = name
        self._rules, _ = device_rules(name)

    def workspace(self, func: Any, args: Any, kwargs: Any, out: Any) -> Workspace | None:
        if isinstance(func, str):
            raise TypeError(
                f"workspace() takes the op object (torch.ops.aten.mm.default), not its name {func!r}"
            )
        fn = self._rules.get(func)
        return fn(args, kwargs or {}, out) if fn is not None else None

    def rule(self, func: Any) -> WorkspaceRule | None:
        """The op's workspace rule, if it has one (`workspace` calls it)."""
        return self._rules.get(func)

    @contextmanager
    def patched(self) -> Iterator[None]:
        """All of this device's kernel patches, active together."""
        with ExitStack() as stack:
            for factory in patches_for(self.name):
                stack.enter_context(factory())
            yield


def device_rules(device: str) -> tuple[dict[OpOverload, WorkspaceRule], list[SkippedOp]]:
    """The device's workspace rules keyed by `OpOverload`, optional ops resolved, and the optional ops
    skipped. Every key is checked to be an `OpOverload`; an optional op resolving to an op already
    registered is refused as any duplicate is."""
    _load_rules()
    table: dict[OpOverload, WorkspaceRule] = {}
    optional: list[tuple[OptionalOp, WorkspaceRule]] = []
    for key, fn in rules_for(device).items():
        if isinstance(key, OptionalOp):
            optional.append((key, fn))
        elif isinstance(key, OpOverload):
            table[key] = fn
        else:
            raise TypeError(f"a workspace rule on {device} is keyed by {key!r}, which is no OpOverload")
    skipped: list[SkippedOp] = []
    for declared, fn in optional:
        op, reason = resolve_optional(declared.name)
        if op is None:
            skipped.append(SkippedOp(device, declared.name, reason))
        elif op in table:
            raise ValueError(f"a workspace rule for {op} on {device} is already registered")
        else:
            table[op] = fn
    return table, skipped


def resolve_optional(name: str) -> tuple[OpOverload | None, str]:
    """The op `namespace::op.overload` names, or None and why it does not resolve."""
    namespace, _, rest = name.partition("::")
    opname, _, overload = rest.partition(".")
    packet = getattr(getattr(torch.ops, namespace), opname, None)
    if packet is None:
        return None, f"no such op in torch {torch.__version__} (nor a library imported that defines it)"
    op = getattr(packet, overload, None)
    if not isinstance(op, OpOverload):
        return None, f"{namespace}::{opname} has no overload {overload!r} in torch {torch.__version__}"
    return op, ""


def skipped_optional_ops() -> list[SkippedOp]:
    """Every device's optional ops that do not resolve here."""
    return [s for device in DEVICES for s in device_rules(device)[1]]


def _load_rules() -> None:
    from ..devices.cpu import (  # noqa: F401  (registering rules and patches)
        attention,
        blas,
        bnb,
        conv,
        gemm_lowp,
        gloo,
        loss,
        norm,
        rng,
        rnn,
        scaled_mm,
    )
    from ..devices.cuda import attention as cuda_attention  # noqa: F401
    from ..devices.cuda import blas as cuda_blas  # noqa: F401
    from ..devices.cuda import bnb as cuda_bnb  # noqa: F401
    from ..devices.cuda import conv as cuda_conv  # noqa: F401
    from ..devices.cuda import loss as cuda_loss  # noqa: F401
    from ..devices.cuda import rnn as cuda_rnn  # noqa: F401
    from ..meta import autocast, compat, compat_bnb, compat_nn, compat_torchvision, optim_meta  # noqa: F401
