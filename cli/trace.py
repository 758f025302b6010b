"""`memtrace MODEL --input SHAPE`: simulate one training (or inference) step and explain its memory."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.text import Text

from memtrace.cli.common import (
    engine_options,
    gpu_option,
    headroom_option,
    make_request,
    user_stdout_to_stderr,
    writable,
)

if TYPE_CHECKING:
    from memtrace.tracer.whatif import WhatIfRow


@click.command("trace", short_help="Simulate a step (the default: `memtrace MODEL ...`).")
@engine_options
@gpu_option()
@headroom_option
@click.option(
    "--what-if",
    "what_if",
    is_flag=True,
    help="Also simulate each single change (autocast, checkpointing, accumulation, SGD) and tabulate.",
)
@click.option("--diagnose", is_flag=True, help="What dominates and what would help, each fix re-simulated.")
@click.option("--layers", "show_layers", is_flag=True, help="Print the per-layer table.")
@click.option("--depth", type=click.IntRange(min=1), default=2, show_default=True, help="Layer table depth.")
@click.option(
    "--sort",
    type=click.Choice(["memory", "params", "flops"]),
    default=None,
    help="Sort the layer table (default: model order).",
)
@click.option(
    "--graph",
    "graph_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Export the fx graph with per-node memory: .graphml, .dot or .json.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the summary.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the JSON result to this file.",
)
def trace(
    graph_file: Path | None,
    diagnose: bool,
    what_if: bool,
    show_layers: bool,
    depth: int,
    sort: str | None,
    as_json: bool,
    output: Path | None,
    **options: Any,
) -> None:
    """Simulate a step of MODEL (FILE.py:FUNC or package.module:FUNC) on the meta device."""
    from memtrace.tracer.layers import at_depth, sort_rows, totals
    from memtrace.tracer.report import diagnosis_view, layers_table, render, what_if_table
    from memtrace.tracer.simulate import run

    writable(output, "--output")
    writable(graph_file, "--graph", (".graphml", ".dot", ".json"))
    request = make_request(**options)
    with user_stdout_to_stderr(as_json):
        result = run(request)
        data = result.to_json()
        layer_rows = sort_rows(at_depth(result.modules, depth), sort)
        data["layers"] = [asdict(r) for r in layer_rows]
        rows: list[WhatIfRow] = []
        if what_if or diagnose:
            from memtrace.tracer.whatif import what_if as compute

            _, rows = compute(request, result)
        if what_if:
            data["what_if"] = [r.to_json() for r in rows]
        diag = None
        if diagnose:
            from memtrace.tracer.diagnosis import diagnose as compute_diagnosis

            diag = compute_diagnosis(request, result, rows)
            data["diagnosis"] = diag.to_json()
        map_line = ""
        if graph_file is not None:
            from memtrace.tracer.mapping import export, map_request

            mapped = map_request(request)
            export(mapped, graph_file)
            map_line = f"{mapped.path_line()}; graph written to {graph_file}"
            data["map"] = {
                "path": mapped.fxmap.path.value,
                "reason": mapped.fxmap.reason,
                "file": str(graph_file),
            }
    if output is not None:
        output.write_text(json.dumps(data, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    console = Console() if Console().is_terminal else Console(width=160)
    render(result, console)
    if map_line:
        console.print(map_line, style="dim")
    if show_layers:
        if not map_line:
            from memtrace.tracer.mapping import map_path

            console.print(map_path(request), style="dim")
        console.print(Text())
        console.print(layers_table(layer_rows, totals(layer_rows), depth))
    if diag is not None:
        console.print(diagnosis_view(result, diag))
    if what_if:
        console.print(what_if_table(result, rows))
