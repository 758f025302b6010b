"""`--repeat-layers K`: simulate a deep stack of identical layers (a Llama's `model.layers`) with K, K+1
and K+2 of them and extrapolate every figure to the full depth (`extrapolate.py`), checked affine on the
three; when it is not, or the model has no such stack, the model is simulated in full, and a note says so.

The stack is found on the built (meta) model: the `nn.ModuleList` of at least K+3 children of one type with
the same parameter and buffer shapes and dtypes, holding the most parameters. The short models are the full
one with the list cut to its first layers (the builder runs as it is; only the list is shortened).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from torch import nn

from ..core.records import Result
from ..devices.gpu import verdict as verdict_for
from .extrapolate import NotAffine, Stack, extrapolate


def signature(module: nn.Module) -> tuple[Any, ...]:
    """What makes two layers the same for the allocator: type, and each tensor's name, shape and dtype."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    kinds = tuple(type(m).__name__ for m in module.modules())
    return (kinds, tuple((n, tuple(t.shape), t.dtype, t.requires_grad) for n, t in tensors))


def find_stack(model: nn.Module, least: int) -> tuple[str, int] | None:
    """The path and length of the list of identical layers holding the most parameters (None when none)."""
    best: tuple[int, str, int] | None = None
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < least:
            continue
        sigs = {signature(child) for child in module}
        if len(sigs) != 1:
            continue
        count = sum(p.numel() for p in module.parameters())
        if best is None or count > best[0]:
            best = (count, path, len(module))
    return (best[1], best[2]) if best is not None else None


def shortened(path: str, keep: int, then: Callable[[nn.Module], None] | None) -> Callable[[nn.Module], None]:
    """A transform that cuts the list at `path` to its first `keep` layers (after `then`, if any)."""

    def cut(model: nn.Module) -> None:
        if then is not None:
            then(model)
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        layers = getattr(parent, name)
        setattr(parent, name, nn.ModuleList(list(layers)[:keep]))

    return cut


def run_repeated(request: Any, run: Callable[[Any], Result], build: Callable[..., Any]) -> Result:
    """The request's result with its repeated stack extrapolated from three short ones (or in full)."""
    k = request.config.repeat_layers
    plain = replace(request, config=replace(request.config, repeat_layers=0))
    built = build(request.builder, dict(request.builder_kwargs))
    if request.transform is not None:
        request.transform(built.model)
    found = find_stack(built.model, k + 3)
    del built
    if found is None:
        return _noted(
            run(plain), f"--repeat-layers {k}: no list of {k + 3} or more identical layers; simulated in full"
        )
    stack = Stack(found[0], found[1], (k, k + 1, k + 2))
    short = [run(replace(plain, transform=shortened(stack.path, n, request.transform))) for n in stack.short]
    try:
        result = extrapolate(short, stack)
    except NotAffine as exc:
        return _noted(run(plain), f"--repeat-layers {k}: {exc}; simulated in full")
    cuda = result.cuda
    return replace(result, verdict=verdict_for(request.gpu, request.headroom, result.peak.bytes, cuda))


def _noted(result: Result, note: str) -> Result:
    return replace(result, notes=(*result.notes, note))
