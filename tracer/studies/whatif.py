"""What-if: the peak for the current recipe and for each single change, each from its own simulation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from torch import nn

from ..core.errors import MemtraceError
from ..core.records import InputSpec, Result
from ..core.specs import OptimizerSpec
from ..core.studies import WhatIfRow
from ..simulate import Request, build, run


def top_level_blocks(model: nn.Module) -> list[str]:
    """Blocks worth checkpointing: the repeated layers of the model's main container (a Sequential of blocks,
    a transformer's `blocks`, GPT-2's `transformer.h`), else its children that hold parameters. Modules with
    submodules are preferred: checkpointing a single layer alone saves little."""
    names = _repeated_children(model)
    if not names:
        for name, child in model.named_children():
            if any(True for _ in child.parameters()):
                inner = _repeated_children(child)
                names += [f"{name}.{n}" for n in inner] if inner else [name]
        if len(names) == 1:
            deeper = top_level_blocks(model.get_submodule(names[0]))
            if deeper:
                return [f"{names[0]}.{n}" for n in deeper]
    blocks = [n for n in names if any(True for _ in model.get_submodule(n).children())]
    return blocks or names  # a flat model: its layers, though checkpointing one layer alone saves little


def _repeated_children(module: nn.Module) -> list[str]:
    if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) > 1:
        return [n for n, c in module.named_children() if any(True for _ in c.parameters())]
    for name, child in module.named_children():
        if isinstance(child, nn.ModuleList) and len(child) > 1:
            return [f"{name}.{n}" for n, _ in child.named_children()]
    return []


def halve_batch(inputs: tuple[InputSpec, ...], exact: bool) -> tuple[InputSpec, ...] | None:
    """Every input with half its leading (batch) dimension: exactly half (for accumulation to keep the
    effective batch), or rounded up; None when there is no batch to halve."""
    heads = [s.shape[0] if s.shape else None for s in inputs]
    if not inputs or not all(isinstance(h, int) and h > 1 and (h % 2 == 0 or not exact) for h in heads):
        return None
    return tuple(replace(s, shape=(-(-int(s.shape[0]) // 2), *s.shape[1:])) for s in inputs)


Variant = tuple[str, str, Callable[[Request], Request | None]]


def _recipe(req: Request, **changes: Any) -> Request:
    return replace(req, config=replace(req.config, recipe=replace(req.config.recipe, **changes)))


def _optimizer(req: Request, spec: OptimizerSpec) -> Request:
    return replace(req, config=replace(req.config, optimizer=spec))


def variants(blocks: list[str], leaves: bool = False) -> list[Variant]:
    def micro(req: Request) -> Request | None:
        half = halve_batch(req.inputs, exact=True)
        if half is None:
            return None
        return replace(_recipe(req, accumulate=req.config.recipe.accumulate * 2), inputs=half)

    return [
        ("bf16 autocast", "--amp bf16", lambda r: _recipe(r, amp="bf16")),
        ("fp16 autocast", "--amp fp16", lambda r: _recipe(r, amp="fp16")),
        (
            f"checkpoint {len(blocks)} {'layers' if leaves else 'blocks'}",
            _checkpoint_flags(blocks),
            lambda r: _recipe(r, checkpoint=tuple(blocks)) if blocks else None,
        ),
        ("half micro-batch, accumulate x2", "--input B/2 --accumulate 2x", micro),
        (
            "SGD with momentum",
            "--optimizer sgd:momentum=0.9",
            lambda r: _optimizer(r, OptimizerSpec("sgd", (("momentum", 0.9),))),
        ),
        ("no optimizer state (plain SGD)", "--optimizer sgd", lambda r: _optimizer(r, OptimizerSpec("sgd"))),
    ]


def _checkpoint_flags(blocks: list[str]) -> str:
    parents = {b.rpartition(".")[0] for b in blocks}
    if len(parents) == 1 and "." in blocks[0] and len(blocks) > 1:
        return f"--checkpoint '{parents.pop()}.*'"
    return " ".join(f"--checkpoint {b}" for b in blocks)


def what_if(request: Request, baseline: Result | None = None) -> tuple[Result, list[WhatIfRow]]:
    """The baseline and one row per single change; rows that do not apply are left out."""
    base = baseline or run(request)
    model = build(request.builder, dict(request.builder_kwargs)).model
    blocks = top_level_blocks(model)
    if request.config.recipe.checkpoint:
        blocks = []  # already checkpointing
    rows = []
    leaves = bool(blocks) and not any(True for _ in model.get_submodule(blocks[0]).children())
    for change, flags, make in variants(blocks, leaves):
        if request.config.mode != "train" and (
            "optimizer" in flags or "accumulate" in flags or "checkpoint" in flags
        ):
            continue
        try:
            varied = make(request)
        except MemtraceError as exc:  # a change the user's own --step would have to make itself
            rows.append(WhatIfRow(change, flags, 0, 0, 0.0, None, f"skipped: {exc.one_line()}"))
            continue
        if varied is None or (varied.config == request.config and varied.inputs == request.inputs):
            continue  # does not apply, or changes nothing (bf16 autocast when --amp bf16 is set)
        rows.append(simulate_row(change, flags, varied, base))
    return base, rows


def simulate_row(change: str, flags: str, request: Request, base: Result) -> WhatIfRow:
    try:
        res = run(request)
    except MemtraceError as exc:
        return WhatIfRow(change, flags, 0, 0, 0.0, None, exc.one_line())
    ratio = res.flops / base.flops if base.flops else 0.0
    return WhatIfRow(
        change, flags, res.peak_bytes, base.peak_bytes - res.peak_bytes, ratio, res.effective_batch
    )
