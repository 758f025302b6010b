"""Device models: what the target's allocator does with the recorded storages.

Two parts: per-op workspace rules (buffers a kernel allocates and frees inside itself, invisible at the
dispatch level) registered per device, and the allocator's size rounding applied at replay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WorkspaceRule = Callable[[Any, Any, Any], "Workspace"]


@dataclass(frozen=True)
class Workspace:
    """Bytes a kernel holds besides its outputs: `before` them (freed first), `during` (with them)."""

    before: int = 0
    during: int = 0


NONE = Workspace()
_RULES: dict[tuple[str, str], WorkspaceRule] = {}


def rule(device: str, *ops: str) -> Callable[[WorkspaceRule], WorkspaceRule]:
    """Register a workspace rule for aten ops (`aten.convolution.default`); duplicates are refused."""

    def register(fn: WorkspaceRule) -> WorkspaceRule:
        for op in ops:
            key = (device, op)
            if key in _RULES:
                raise ValueError(f"a workspace rule for {op} on {device} is already registered")
            _RULES[key] = fn
        return fn

    return register


def rules_for(device: str) -> dict[str, WorkspaceRule]:
    return {op: fn for (dev, op), fn in _RULES.items() if dev == device}


class DeviceModel:
    """The target device: its name, its workspace rules, and its allocation rounding."""

    def __init__(self, name: str) -> None:
        if name not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {name!r} (cpu or cuda)")
        self.name = name
        self._rules = rules_for(name)

    def workspace(self, func: Any, args: Any, kwargs: Any, out: Any) -> Workspace:
        fn = self._rules.get(str(func))
        return fn(args, kwargs or {}, out) if fn is not None else NONE

    def round(self, nbytes: int) -> int:
        return round_size(self.name, nbytes)


def round_size(device: str, nbytes: int) -> int:
    """CPU: exact. CUDA: the caching allocator's block rounding (at least 512 bytes, multiples of 512)."""
    if device == "cpu":
        return nbytes
    if nbytes < 512:
        return 512
    return (nbytes + 511) // 512 * 512
