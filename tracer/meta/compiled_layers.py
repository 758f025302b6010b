"""Which layer a compiled region's buffers belong to (issue 23): inductor's own answer, not the region's.

Module hooks do not fire inside a compiled region, so without this every buffer of inductor's wrapper is the
compiled module's. Inductor knows better: each buffer it plans has `origins`, the fx nodes whose values it
holds (a fused kernel's buffer holds the last of them: batch norm's output fused into its ReLU is the
ReLU's), and AOTAutograd keeps each node's `nn_module_stack` (a backward node's is its forward node's,
`fwd_nn_module_stack`). When inductor writes a graph's wrapper, the buffer names are read with their
modules, resolved on the compiled module; when the wrapper runs on meta, each `bufN = ...` line runs as
that module's (the engine says how: `own_buffers_with`)."""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any
from unittest import mock

from torch import nn

from .after_import import after_import

_ROOTS: list[nn.Module | None] = []  # the module being compiled, while its graphs compile
# the same, by Dynamo's tracing context: AOTAutograd compiles a backward lazily, at its first call, under the
# forward's context
_ROOT_OF: weakref.WeakKeyDictionary[Any, nn.Module] = weakref.WeakKeyDictionary()
_OWNER: list[Callable[[nn.Module], AbstractContextManager[None]]] = []


def own_buffers_with(owner: Callable[[nn.Module], AbstractContextManager[None]]) -> None:
    """The engine's way to file what runs next under a module (its recorder's)."""
    _OWNER[:] = [owner]


def root_of(target: Any) -> nn.Module | None:
    """The module a `torch.compile` target runs: the module, a module's bound method, or a wrapper of it."""
    target = getattr(target, "__wrapped__", target)
    target = getattr(target, "__self__", target)
    return target if isinstance(target, nn.Module) else None


@contextmanager
def compiling(root: nn.Module | None) -> Iterator[None]:
    from torch._guards import TracingContext

    context = TracingContext.try_get()
    if context is not None and root is not None:
        _ROOT_OF[context] = root
    _ROOTS.append(root)
    try:
        yield
    finally:
        _ROOTS.pop()


def _relative(path: str) -> str:
    """`L['fn']._modules['0'].fc`, `L['self'].layers[0]`: the dotted path below the compiled module."""
    path = re.sub(r"^[LG]\[['\"][^'\"]*['\"]\]", "", path).replace(".__self__", "")
    path = re.sub(r"\._modules\[['\"]([^'\"]+)['\"]\]", r".\1", path)
    path = re.sub(r"\[['\"]?([^'\"\]]+)['\"]?\]", r".\1", path)
    return path.strip(".")


def _module_of(origins: Any, root: nn.Module, order: dict[Any, dict[Any, int]]) -> nn.Module | None:
    """The module of the last origin (in graph order) that has one: the op whose value the buffer holds."""
    ranked = []
    for node in origins:
        stack = node.meta.get("nn_module_stack") or node.meta.get("fwd_nn_module_stack")
        if stack:
            if node.graph not in order:
                order[node.graph] = {n: i for i, n in enumerate(node.graph.nodes)}
            ranked.append((order[node.graph].get(node, -1), list(stack.values())[-1][0]))
    if not ranked:
        return None
    try:
        return root.get_submodule(_relative(str(max(ranked, key=lambda r: r[0])[1])))
    except AttributeError:
        return None


@contextmanager
def buffers_read(owners: dict[str, dict[str, nn.Module]]) -> Iterator[None]:
    """While inductor writes a graph's wrapper for a module compiled under memtrace, read each buffer's
    module into `owners[wrapper source]`. Inductor's graph module is patched once the step imports it (a
    step that compiles): importing it costs a second that no other step needs."""
    with ExitStack() as stack:
        stack.enter_context(
            after_import("torch._inductor.graph", lambda: stack.enter_context(_codegen_reads(owners)))
        )
        yield


@contextmanager
def _codegen_reads(owners: dict[str, dict[str, nn.Module]]) -> Iterator[None]:
    from torch._inductor.graph import GraphLowering

    real = GraphLowering.codegen

    def codegen(self: GraphLowering) -> Any:
        out = real(self)
        root = _ROOTS[-1] if _ROOTS else _root_of_context()
        if root is not None:
            order: dict[Any, dict[Any, int]] = {}
            buffers = self.name_to_buffer.items()
            found = {name: _module_of(_origins(buf), root, order) for name, buf in buffers}
            owners[out[0].value] = {name: m for name, m in found.items() if m is not None}
        return out

    with mock.patch.object(GraphLowering, "codegen", codegen):
        yield


def _root_of_context() -> nn.Module | None:
    from torch._guards import TracingContext

    context = TracingContext.try_get()
    return _ROOT_OF.get(context) if context is not None else None


def _origins(buffer: Any) -> Any:
    return buffer.get_origins()


_ASSIGNED = re.compile(r"^(\s+)(buf\d+) = ", re.MULTILINE)


def owned_source(source: str, owners: dict[str, nn.Module]) -> tuple[str, Callable[[str], Any]]:
    """The wrapper with each buffer's assignment run as its module's, and the function those lines call."""
    if not owners or not _OWNER:
        return source, _unowned

    def owned(name: str) -> AbstractContextManager[None]:
        module = owners.get(name)
        return _OWNER[0](module) if module is not None else nullcontext()

    return _ASSIGNED.sub(r"\1with _memtrace_owner('\2'): \2 = ", source), owned


def _unowned(name: str) -> AbstractContextManager[None]:
    return nullcontext()
