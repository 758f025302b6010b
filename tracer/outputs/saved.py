"""The one record every renderer takes (`Saved`): the Result and what the command added to it (the layer
rows, what-if rows, diagnosis, the map line) and, fresh from a run, the run's trace and placement for the
exports; made in memory by `trace`, or read back from a saved `--output` (`Saved.from_json`). Each output
module renders it with `render(saved, out)`: the terminal report (`report.py`), JSON (here), HTML, the
timeline plot, the memory snapshot and the Chrome trace.

`trace` prints through `report.render` too, so `memtrace show RESULT.json` gives the same text without
re-tracing. The what-if and diagnosis records are imported only when a saved result has them (their
modules import torch).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console

from ..core.heap import collector_paused
from ..core.plain import plain
from ..core.records import Category, LayerRow, LayerShare, Result
from . import indented, report

if TYPE_CHECKING:
    from ..analysis.compose import Run
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
    map_info: dict[str, str] | None = None  # --graph: the map's path, reason and file, as saved
    run: Run | None = None  # fresh from a run (not saved): the trace and its placement, for the exports

    @property
    def depth(self) -> int:
        return int(self.result.flags.get("depth") or DEFAULT_DEPTH)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Saved:
        return saved_from_json(data)

    def to_json(self) -> dict[str, Any]:
        """What `trace --json` prints and `--output` writes: the Result's JSON and what the command added."""
        data = self.result.to_json()
        data["layers"] = plain(self.layers)
        if self.what_if is not None:
            data["what_if"] = [r.to_json() for r in self.what_if]
        if self.diagnosis is not None:
            data["diagnosis"] = self.diagnosis.to_json()
        if self.map_line:
            data["map_line"] = self.map_line
        if self.map_info is not None:
            data["map"] = self.map_info
        return data


def json_text(saved: Saved) -> str:
    """`json.dumps(saved.to_json(), indent=2)` (through `indented.dumps`: the same text, faster)."""
    with collector_paused():  # a 70B cuda step's JSON: ~100k objects made, none to collect
        return indented.dumps(saved.to_json())


def render(saved: Saved, out: IO[str] | Path) -> None:
    """The JSON of the result, as `--output` writes it."""
    text = json_text(saved) + "\n"
    if isinstance(out, Path):
        out.write_text(text)
    else:
        out.write(text)


def saved_from_json(data: dict[str, Any]) -> Saved:
    """Read what `trace --output` wrote (older schemas too: what they lack is left out)."""
    rows = tuple(
        LayerRow(**{**d, "output_shape": tuple(d["output_shape"]), "input_shape": tuple(d["input_shape"])})
        for d in data.get("layers", ())
    )
    what_if = tuple(_what_if_row(r) for r in data["what_if"]) if "what_if" in data else None
    diagnosis = _diagnosis(data["diagnosis"]) if data.get("diagnosis") else None
    return Saved(
        Result.from_json(data),
        rows,
        what_if,
        diagnosis,
        str(data.get("map_line", "")),
        "map" in data,
        data.get("map"),
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
    """The terminal report of `memtrace trace` (`report.render`)."""
    report.render(saved, console, layers=show_layers)


report_console = report.report_console
