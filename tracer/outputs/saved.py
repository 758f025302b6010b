"""A saved `memtrace trace` output read back: the Result and what the command added to it (the layer rows,
what-if rows, diagnosis, the map line), and the terminal report printed from them.

`trace` prints through `print_report` too, so `memtrace show RESULT.json` gives the same text without
re-tracing. The what-if and diagnosis records are imported only when a saved result has them (their
modules import torch).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from ..analysis.layers import totals
from ..core.records import Category, LayerRow, LayerShare, Result
from .report import diagnosis_view, layers_table, render, what_if_table

if TYPE_CHECKING:
    from ..core.studies import Diagnosis, WhatIfRow

DEFAULT_DEPTH = 2


@dataclass(frozen=True)
class Saved:
    result: Result
    layers: tuple[LayerRow, ...] = ()
    what_if: tuple[WhatIfRow, ...] | None = None
    diagnosis: Diagnosis | None = None
    map_line: str = ""  # how the layer map was made (printed with --layers, or with --graph)
    graph: bool = False  # the map line came from --graph: printed after the summary even without --layers

    @property
    def depth(self) -> int:
        return int(self.result.flags.get("depth") or DEFAULT_DEPTH)


def saved_from_json(data: dict[str, Any]) -> Saved:
    """Read what `trace --output` wrote (older schemas too: what they lack is left out)."""
    rows = tuple(
        LayerRow(**{**d, "output_shape": tuple(d["output_shape"]), "input_shape": tuple(d["input_shape"])})
        for d in data.get("layers", ())
    )
    what_if = tuple(_what_if_row(r) for r in data["what_if"]) if "what_if" in data else None
    diagnosis = _diagnosis(data["diagnosis"]) if data.get("diagnosis") else None
    return Saved(
        Result.from_json(data), rows, what_if, diagnosis, str(data.get("map_line", "")), "map" in data
    )


def _what_if_row(d: dict[str, Any]) -> WhatIfRow:
    from ..core.studies import WhatIfRow

    return WhatIfRow(**{f.name: d[f.name] for f in fields(WhatIfRow) if f.name in d})


def _diagnosis(d: dict[str, Any]) -> Diagnosis:
    from ..core.studies import Diagnosis, FlattenHead

    dom = d.get("dominant")
    dominant = None
    if dom is not None:
        by_cat = {Category(k): v for k, v in dom["by_category"].items()}
        dominant = LayerShare(dom["module"], dom["type"], dom["bytes"], by_cat)
    heads = tuple(FlattenHead(**{**h, "feature_map": tuple(h["feature_map"])}) for h in d["flatten_heads"])
    return Diagnosis(dominant, heads, tuple(_what_if_row(f) for f in d["fixes"]))


def print_report(console: Console, saved: Saved, show_layers: bool) -> None:
    """The terminal report of `memtrace trace`, from the saved records alone."""
    result = saved.result
    render(result, console)
    if saved.graph and saved.map_line:
        console.print(saved.map_line, style="dim")
    if show_layers:
        if not saved.graph and saved.map_line:
            console.print(saved.map_line, style="dim")
        console.print(Text())
        console.print(layers_table(saved.layers, totals(saved.layers), saved.depth))
    if saved.diagnosis is not None:
        console.print(diagnosis_view(result, saved.diagnosis))
    if saved.what_if is not None:
        console.print(what_if_table(result, saved.what_if))


def report_console() -> Console:
    """The console `trace` and `show` print to: the terminal's, else 160 columns (pipes, tests)."""
    return Console() if Console().is_terminal else Console(width=160)
