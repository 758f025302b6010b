"""What dominates the peak and what would help, each fix predicted by re-simulating, not guessed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from ..core.records import LayerRow, Result
from ..core.studies import Diagnosis, FlattenHead, WhatIfRow
from ..simulate import Request
from .fit import _half_resolution
from .whatif import halve_batch, simulate_row, what_if


def flatten_heads(modules: tuple[LayerRow, ...]) -> list[FlattenHead]:
    """Linears whose input is a Flatten of a (N, C, H, W) map with H*W > 1 (pure: from the layer rows)."""
    heads = []
    for f in (m for m in modules if m.type == "Flatten" and len(m.input_shape) == 4):
        _, c, h, w = f.input_shape
        if h * w <= 1:
            continue
        for lin in modules:
            if lin.type == "Linear" and lin.input_shape and lin.input_shape[-1] == c * h * w:
                out = lin.output_shape[-1]
                elem = lin.parameter_bytes // max(lin.parameters, 1)
                has_bias = lin.parameters == c * h * w * out + out
                gap = (c * out + (out if has_bias else 0)) * elem
                heads.append(
                    FlattenHead(f.name, lin.name, (c, h, w), c * h * w, out, lin.parameter_bytes, gap)
                )
    return heads


def _gap_surgery(head: FlattenHead) -> Any:
    def transform(model: nn.Module) -> None:
        lin = model.get_submodule(head.linear)
        assert isinstance(lin, nn.Linear)
        new = nn.Linear(
            head.feature_map[0],
            head.out_features,
            bias=lin.bias is not None,
            device=lin.weight.device,
            dtype=lin.weight.dtype,
        )
        _set(model, head.linear, new)
        _set(model, head.flatten, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))

    return transform


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def diagnose(request: Request, base: Result, what_if_rows: list[WhatIfRow] | None = None) -> Diagnosis:
    heads = flatten_heads(base.modules)
    fixes: list[WhatIfRow] = []
    for head in heads:
        fixes.append(
            simulate_row(
                f"global average pooling head for {head.linear}",
                f"replace {head.flatten} -> {head.linear} by a pooled head",
                replace(request, transform=_gap_surgery(head)),
                base,
            )
        )
    if any(len(s.shape) >= 3 for s in request.inputs):
        fixes.append(
            simulate_row(
                "half resolution", "halve the last two input dimensions", _half_resolution(request), base
            )
        )
    half = halve_batch(request.inputs, exact=False)
    if half is not None:
        fixes.append(
            simulate_row("half batch", "--input with half the batch", replace(request, inputs=half), base)
        )
    rows = what_if_rows if what_if_rows is not None else what_if(request, base)[1]
    wanted = ("bf16 autocast", "checkpoint", "SGD with momentum")
    fixes += [r for r in rows if r.change.startswith(wanted)]
    dominant = base.top_layers[0] if base.top_layers else None
    return Diagnosis(dominant, tuple(heads), tuple(fixes))
