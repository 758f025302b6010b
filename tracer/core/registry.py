"""The rule registry: per-device workspace rules and kernel patches, registered by the modules of
`devices/` (and `meta/`) and loaded by the engine (`engine/device_model.py`). Pure: no torch.

A workspace rule describes the buffers a kernel allocates and frees inside itself, invisible at the dispatch
level; a kernel patch swaps in the device's own kernel for a composite op while simulating.

Rules are keyed by the op object itself (`@rule("cpu", aten.mm.default)` with `aten = torch.ops.aten`), as
`torch/utils/flop_counter.py` keys its formulas: a misspelt op fails when its module is imported, and a
string or an `OpOverloadPacket` is refused at registration. An op that may be absent where memtrace runs (a
library's custom op, an op newer than the oldest PyTorch supported) is declared `optional("ns::op.overload")`:
the engine resolves it when it loads the rules and skips it, saying why, when it does not resolve. The keys
are kept as given; this module recognises an `OpOverload` by its attributes, without importing torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

WorkspaceRule = Callable[[Any, Any, Any], "Workspace | None"]


@dataclass(frozen=True)
class Step:
    """One step inside a kernel: allocate a buffer, free one, allocate the op's output `index`, or keep a
    buffer for the rest of the run (`persist`: a library workspace, allocated once per `name`)."""

    kind: str  # "alloc" | "free" | "output" | "persist"
    key: int
    nbytes: int = 0
    name: str = ""


@dataclass
class Workspace:
    """The order of a kernel's own allocations around its outputs, as the device's allocator sees them.

    A rule builds it step by step: `buf = ws.alloc(n)`, `ws.output(0)`, `ws.free(buf)`. Outputs the rule
    does not place are allocated where `ws.outputs()` stands, or after every step if it never does.
    Buffers still allocated at the end are freed there. `ws.persist(name, n)` allocates a buffer the first
    time a `name` is seen in the run and never frees it. `estimate` is a (low, high) range of bytes the
    kernel allocates and frees that no rule can place (a heuristic's choice): recorded, not simulated.
    """

    steps: list[Step] = field(default_factory=list)
    output_nbytes: int = 0  # when the kernel's output storage is larger than its meta kernel's
    estimate: tuple[int, int] | None = None
    _next: int = 0

    def alloc(self, nbytes: int) -> int:
        self._next += 1
        if nbytes > 0:
            self.steps.append(Step("alloc", self._next, int(nbytes)))
        return self._next

    def free(self, key: int) -> None:
        self.steps.append(Step("free", key))

    def persist(self, name: str, nbytes: int) -> None:
        self.steps.append(Step("persist", 0, int(nbytes), name))

    def output(self, index: int) -> None:
        self.steps.append(Step("output", index))

    def outputs(self) -> None:
        self.steps.append(Step("output", -1))


_OPTIONAL_NAME = re.compile(r"[A-Za-z_]\w*::[A-Za-z_]\w*\.[A-Za-z_]\w*")


@dataclass(frozen=True)
class OptionalOp:
    """An op a rule applies to only where it exists, named `namespace::op.overload`
    (`torchvision::roi_align.default`): resolved when the engine loads the rules, skipped when it does not
    resolve (its library not imported, or an op the installed PyTorch lacks)."""

    name: str

    def __str__(self) -> str:
        return self.name


def optional(name: str) -> OptionalOp:
    """Declare an op that may be absent, by its qualified name (`torchvision::nms.default`)."""
    if not isinstance(name, str) or not _OPTIONAL_NAME.fullmatch(name):
        raise ValueError(
            f"an optional op is named namespace::op.overload (torchvision::nms.default), not {name!r}"
        )
    return OptionalOp(name)


def is_op_overload(op: object) -> bool:
    """Whether `op` is a `torch._ops.OpOverload`, told by its attributes (this module imports no torch)."""
    return any(c.__name__ == "OpOverload" for c in type(op).__mro__) and all(
        hasattr(op, attr) for attr in ("_schema", "_overloadname", "overloadpacket", "namespace")
    )


def _refuse_bad_op(device: str, op: object) -> None:
    """A rule's key must be an `OpOverload` or an `optional(...)` declaration: anything else is refused."""
    if isinstance(op, OptionalOp) or is_op_overload(op):
        return
    where = f"a workspace rule on {device}"
    if isinstance(op, str):
        raise ValueError(
            f"{where} names the op by the string {op!r}: register the op object (torch.ops.aten.mm.default), "
            "or optional('namespace::op.overload') for an op that may be absent"
        )
    if hasattr(op, "overloads") and hasattr(op, "_qualified_op_name"):
        raise ValueError(f"{where} names the OpOverloadPacket {op}: name one overload ({op}.default)")
    raise ValueError(f"{where} names {op!r}, which is no OpOverload")


_RULES: dict[tuple[str, object], WorkspaceRule] = {}


def _register(table: dict[tuple[str, Any], Any], key: tuple[str, Any], fn: Any, what: str) -> None:
    """One registry rule for rules and patches: a second registration for the same key is refused."""
    if key in table:
        raise ValueError(f"a {what} for {key[1]} on {key[0]} is already registered")
    table[key] = fn


def rule(device: str, *ops: object) -> Callable[[WorkspaceRule], WorkspaceRule]:
    """Register a workspace rule for op overloads (`aten.convolution.default`, with `aten = torch.ops.aten`)
    or `optional(...)` ones; a string, an `OpOverloadPacket` and a duplicate are refused."""
    for op in ops:
        _refuse_bad_op(device, op)

    def register(fn: WorkspaceRule) -> WorkspaceRule:
        for op in ops:
            _register(_RULES, (device, op), fn, "workspace rule")
        return fn

    return register


PatchFactory = Callable[[], AbstractContextManager[None]]
_PATCHES: dict[tuple[str, str], PatchFactory] = {}


def patch(device: str, name: str) -> Callable[[PatchFactory], PatchFactory]:
    """Register a context manager that swaps in the device's own kernel for a composite op while simulating.

    For ops whose real device kernel differs from what meta decomposes them into (an LSTM runs as one fused
    oneDNN/cuDNN kernel with a workspace, not as hundreds of cell ops), the patch emulates the device kernel's
    allocations on meta tensors.
    """

    def register(fn: PatchFactory) -> PatchFactory:
        _register(_PATCHES, (device, name), fn, "kernel patch")
        return fn

    return register


def rules_for(device: str) -> dict[object, WorkspaceRule]:
    """The device's rules as registered: keyed by `OpOverload`s and `OptionalOp`s (the engine resolves
    those)."""
    return {op: fn for (dev, op), fn in _RULES.items() if dev == device}


def patches_for(device: str) -> list[PatchFactory]:
    """The device's kernel patches, in the order of their names."""
    return [factory for (dev, _), factory in sorted(_PATCHES.items()) if dev == device]
