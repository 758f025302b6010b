"""`memtrace MODEL --input SHAPE`: simulate one training (or inference) step and explain its memory."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from memtrace.cli.common import (
    engine_options,
    file_option,
    gpu_option,
    headroom_option,
    make_request,
    plot_option,
    user_stdout_to_stderr,
    writable,
)
from memtrace.tracer.analysis.layers import at_depth, sort_rows
from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.core.records import GpuSpec, Result

if TYPE_CHECKING:
    from memtrace.tracer.core.studies import Diagnosis, WhatIfRow
    from memtrace.tracer.outputs.saved import Saved
    from memtrace.tracer.simulate import Request


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
@file_option(
    "--graph", "graph_file", text="Export the fx graph with per-node memory: .graphml, .dot or .json."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the summary.")
@file_option("--output", text="Also write the JSON result to this file.")
@plot_option("Write the memory timeline of the step: FILE.png or FILE.svg.")
@file_option(
    "--html",
    "html_file",
    text="Write a self-contained HTML report (summary, timeline, layers, diagnosis, what-if).",
)
@file_option(
    "--export-snapshot",
    "snapshot_file",
    text="Write the predicted step as a torch.cuda.memory._snapshot() pickle, for PyTorch's memory_viz "
    "(--device cuda).",
)
@file_option(
    "--export-trace",
    "trace_file",
    text="Write a Chrome/Perfetto trace (JSON): memory counters per category, the ops as slices.",
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
    plot_file: Path | None,
    html_file: Path | None,
    snapshot_file: Path | None,
    trace_file: Path | None,
    **options: Any,
) -> None:
    """Simulate a step of MODEL (FILE.py:FUNC or package.module:FUNC) on the meta device."""
    from memtrace.cli.show import write_pictures
    from memtrace.tracer.outputs import saved as saved_json
    from memtrace.tracer.outputs.report import render, report_console
    from memtrace.tracer.outputs.saved import Saved
    from memtrace.tracer.simulate import run, run_recorded

    _check_outputs(output, graph_file, plot_file, html_file, snapshot_file, trace_file, options["device"])
    if options.get("repeat_layers") and (snapshot_file or trace_file or graph_file):
        raise MemtraceError("--repeat-layers extrapolates figures: no trace to export, no graph to draw")
    request = make_request(**options)
    with user_stdout_to_stderr(as_json):
        if request.config.repeat_layers:  # no full trace: its figures from three short stacks
            ran, result = None, run(request)
        else:
            ran = run_recorded(request)
            result = ran.result
        result = replace(result, flags=command_flags())
        layers = tuple(sort_rows(at_depth(result.modules, depth), sort))
        rows, diagnosis = _extras(request, result, what_if, diagnose)
        map_line, map_info = _map(request, graph_file, show_layers)
        saved = Saved(result, layers, rows, diagnosis, map_line, map_info is not None, map_info, ran)
        _export(saved, snapshot_file, trace_file)
    if output is not None:
        saved_json.render(saved, output)
    write_pictures(saved, plot_file, html_file)
    if as_json:
        click.echo(saved_json.json_text(saved))
        return
    render(saved, report_console(), layers=show_layers)


def _check_outputs(
    output: Path | None,
    graph_file: Path | None,
    plot_file: Path | None,
    html_file: Path | None,
    snapshot_file: Path | None,
    trace_file: Path | None,
    device: str,
) -> None:
    """Refuse a bad output path before simulating."""
    writable(output, "--output")
    writable(graph_file, "--graph", (".graphml", ".dot", ".json"))
    writable(plot_file, "--plot", (".png", ".svg"))
    writable(html_file, "--html", (".html", ".htm"))
    writable(snapshot_file, "--export-snapshot", (".pickle", ".pkl"))
    writable(trace_file, "--export-trace", (".json",))
    if snapshot_file is not None and device != "cuda":
        raise MemtraceError("--export-snapshot is a CUDA memory snapshot: it needs --device cuda")


def _extras(
    request: Request, result: Result, what_if: bool, diagnose: bool
) -> tuple[tuple[WhatIfRow, ...] | None, Diagnosis | None]:
    """The what-if rows (with --what-if) and the diagnosis (with --diagnose), which re-simulate."""
    rows: list[WhatIfRow] = []
    if what_if or diagnose:
        from memtrace.tracer.studies.whatif import what_if as compute

        _, rows = compute(request, result)
    diagnosis = None
    if diagnose:
        from memtrace.tracer.studies.diagnosis import diagnose as compute_diagnosis

        diagnosis = compute_diagnosis(request, result, rows)
    return (tuple(rows) if what_if else None), diagnosis


def _map(request: Request, graph_file: Path | None, show_layers: bool) -> tuple[str, dict[str, str] | None]:
    """The fx map: exported with --graph; how it would be made, for the layer table, with --layers.

    --graph runs the step again, through the fx interpreter (studies/fxmap.py): the map attributes each event
    to the fx node that made it, which the run's own trace (recorded on the eager model) does not know, and
    an infer-mode step through the map can peak lower than the eager one that the figures report."""
    if graph_file is not None:
        from memtrace.tracer.studies.mapping import export, map_request

        mapped = map_request(request)
        export(mapped, graph_file)
        info = {"path": mapped.fxmap.path.value, "reason": mapped.fxmap.reason, "file": str(graph_file)}
        return f"{mapped.path_line()}; graph written to {graph_file}", info
    if show_layers:
        from memtrace.tracer.studies.mapping import map_path

        return map_path(request), None
    return "", None


def _export(saved: Saved, snapshot_file: Path | None, trace_file: Path | None) -> None:
    """--export-snapshot and --export-trace, from the run's trace and its one placement on cuda."""
    if saved.run is None:
        return
    if snapshot_file is not None:
        from memtrace.tracer.outputs import export_snapshot

        export_snapshot.render(saved, snapshot_file)
    if trace_file is not None:
        from memtrace.tracer.outputs import export_trace

        export_trace.render(saved, trace_file)


def command_flags() -> dict[str, Any]:
    """The options the command ran with, as text: saved with the result (`show` and the HTML use them)."""
    ctx = click.get_current_context()
    return {k: _flag(v) for k, v in ctx.params.items() if v not in (None, (), False)}


def _flag(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (tuple, list)):
        return [_flag(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, GpuSpec):
        return value.name
    text = getattr(value, "text", None)
    return text() if callable(text) else str(value)
