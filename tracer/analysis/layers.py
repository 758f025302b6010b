"""The per-layer table: each module's own figures from the trace, rolled up to a depth. Pure: no torch.

Every storage of the step lands in exactly one row: its module's (parameters, their gradients and optimizer
state belong to the module that holds the parameter; activations and temporaries to the module whose op made
them), `(loss)` for what the loss makes (in the loss phase, or in a loss function the model calls itself), the
root's row `(model)` for what else runs outside any submodule, and `(inputs)`. So the columns sum to the
summary's totals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..core.records import LOSS, OPTIMIZER_STEP, Category, LayerRow, Peak, Phase, Trace
from .peaks import (
    live_at_peak,
    loss_type,
    owner_of,
    storages_in,
)

INPUTS = "(inputs)"
ROOT = "(model)"


@dataclass(frozen=True)
class ModuleFacts:
    """What only torch can tell: a module's type and how many parameters it holds itself."""

    name: str
    type: str
    parameters: int


def _depth(name: str) -> int:
    return 0 if name in ("", ROOT, INPUTS, OPTIMIZER_STEP, LOSS) else name.count(".") + 1


def module_rows(
    trace: Trace,
    peak: Peak,
    facts: Sequence[ModuleFacts],
    iteration: int,
    at_peak: set[int] | None = None,
    step: set[int] | None = None,
) -> tuple[LayerRow, ...]:
    """Each module's own figures (not its children's), in the device's allocation sizes. `at_peak` (the
    storages live at the peak) and `step` (the iteration's `storages_in`): where the caller has them."""
    rows = {f.name: _empty(f) for f in facts}
    rows[OPTIMIZER_STEP] = _empty(ModuleFacts(OPTIMIZER_STEP, "", 0))
    rows[INPUTS] = _empty(ModuleFacts(INPUTS, "", 0))
    step = storages_in(trace, iteration) if step is None else step
    rows[LOSS] = _empty(ModuleFacts(LOSS, loss_type(trace.storages[s] for s in step), 0))
    at_peak = live_at_peak(trace, peak) if at_peak is None else at_peak
    sums: dict[str, dict[str, int]] = {}  # per row, the bytes and FLOPs to add: one replace per row
    for (category, module, phase, live), nbytes in _grouped(trace, step, at_peak).items():
        key = INPUTS if category is Category.INPUT else owner_of(module, phase, category)
        key = key if key in rows else ""
        adds = sums.setdefault(key, {})
        add = _BYTES.get(category)
        forward = phase in (Phase.FORWARD, Phase.RECOMPUTE)
        if add is None and category is Category.ACTIVATION and forward:
            add = "activation_bytes"
        if add is not None:
            adds[add] = adds.get(add, 0) + nbytes
        if live:
            adds["peak_bytes"] = adds.get("peak_bytes", 0) + nbytes
            if category is Category.KV_CACHE:
                adds["kv_cache"] = adds.get("kv_cache", 0) + nbytes
    for name, flops in trace.module_flops.items():
        name = LOSS if name.startswith(LOSS) else name
        if name in rows:
            adds = sums.setdefault(name, {})
            adds["flops"] = adds.get("flops", 0) + flops
    for key, adds in sums.items():
        row = vars(rows[key])  # made anew, not through `replace` (a 70B step has a thousand rows)
        rows[key] = LayerRow(**{**row, **{field: row[field] + n for field, n in adds.items()}})
    if rows[LOSS] == _empty(ModuleFacts(LOSS, "", 0)):
        del rows[LOSS]  # no loss (inference): no row
    inputs = trace.input_shapes
    for name, shape in trace.output_shapes.items():
        if name in rows:
            rows[name] = LayerRow(
                **{**vars(rows[name]), "output_shape": shape, "input_shape": inputs.get(name, ())}
            )
    return tuple(rows.values())


def _grouped(trace: Trace, step: set[int], at_peak: set[int]) -> dict[tuple[Category, str, Phase, bool], int]:
    """The step's storages' bytes summed by what decides their row and columns: category, module, phase
    and whether live at the peak (a long decode's half a million storages fall in a few thousand groups)."""
    groups: dict[tuple[Category, str, Phase, bool], int] = {}
    storages = trace.storages
    for sid in step:
        info = storages[sid]
        key = (info.category, info.module, info.phase, sid in at_peak)
        groups[key] = groups.get(key, 0) + info.nbytes
    return groups


_BYTES = {
    Category.PARAMETER: "parameter_bytes",
    Category.BUFFER: "parameter_bytes",
    Category.GRADIENT: "gradient_bytes",
    Category.OPTIMIZER_STATE: "optimizer_bytes",
}


def _empty(f: ModuleFacts) -> LayerRow:
    return LayerRow(f.name, f.type, _depth(f.name), (), f.parameters, 0, 0, 0, 0, 0, 0)


def at_depth(rows: Iterable[LayerRow], depth: int) -> tuple[LayerRow, ...]:
    """Roll each module's figures up into its ancestor at `depth`; the root's own go to `(model)`."""
    own = list(rows)
    by_name = {r.name: r for r in own}
    out: dict[str, LayerRow] = {}
    for r in own:
        if r.name in (INPUTS, OPTIMIZER_STEP, LOSS):
            target = r.name
        elif r.name == "":
            target = ROOT
        else:
            target = _ancestor(r.name, depth)
        if target not in out:
            template = by_name.get("" if target == ROOT else target, r)
            zeroed: Any = _zero()
            out[target] = replace(template, name=target, depth=_depth(target), **zeroed)
        out[target] = _plus(out[target], r)
    return tuple(out.values())


def _ancestor(name: str, depth: int) -> str:
    return ".".join(name.split(".")[:depth])


def _zero() -> dict[str, int]:
    fields = (
        "parameters",
        "parameter_bytes",
        "gradient_bytes",
        "optimizer_bytes",
        "activation_bytes",
        "peak_bytes",
        "flops",
        "kv_cache",
    )
    return dict.fromkeys(fields, 0)


def _plus(a: LayerRow, b: LayerRow) -> LayerRow:
    return replace(a, **{k: getattr(a, k) + getattr(b, k) for k in _zero()})


def totals(rows: Iterable[LayerRow]) -> LayerRow:
    total = LayerRow("total", "", 0, (), 0, 0, 0, 0, 0, 0, 0)
    for r in rows:
        total = _plus(total, r)
    return total


SORT_KEYS = {
    "memory": lambda r: -r.peak_bytes,
    "params": lambda r: -r.parameters,
    "flops": lambda r: -r.flops,
}


def sort_rows(rows: Sequence[LayerRow], key: str | None) -> list[LayerRow]:
    if key is None:
        return list(rows)
    if key not in SORT_KEYS:
        raise ValueError(f"unknown sort key {key!r} (memory, params, flops)")
    return sorted(rows, key=SORT_KEYS[key])
