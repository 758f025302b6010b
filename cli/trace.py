"""`memtrace MODEL --input SHAPE`: simulate one training (or inference) step and explain its memory."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
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
from memtrace.tracer.core.records import GpuSpec, Result, Trace

if TYPE_CHECKING:
    from memtrace.tracer.core.studies import WhatIfRow
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
    from memtrace.tracer.outputs.saved import print_report, report_console, saved_from_json
    from memtrace.tracer.simulate import run, run_traced

    _check_outputs(output, graph_file, plot_file, html_file, snapshot_file, trace_file, options["device"])
    if options.get("repeat_layers") and (snapshot_file or trace_file or graph_file):
        raise MemtraceError("--repeat-layers extrapolates figures: no trace to export, no graph to draw")
    request = make_request(**options)
    with user_stdout_to_stderr(as_json):
        if request.config.repeat_layers:  # no full trace: its figures from three short stacks
            recorded, result = None, run(request)
        else:
            recorded, result = run_traced(request)
        result = replace(result, flags=command_flags())
        data = result.to_json()
        data["layers"] = [asdict(r) for r in sort_rows(at_depth(result.modules, depth), sort)]
        _add_extras(data, request, result, what_if, diagnose)
        _add_map(data, request, graph_file, show_layers)
        _export(recorded, result, request, snapshot_file, trace_file)
    if output is not None:
        output.write_text(json.dumps(data, indent=2) + "\n")
    saved = saved_from_json(data)
    write_pictures(saved, plot_file, html_file)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    print_report(report_console(), saved, show_layers)


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


def _add_extras(
    data: dict[str, Any], request: Request, result: Result, what_if: bool, diagnose: bool
) -> None:
    rows: list[WhatIfRow] = []
    if what_if or diagnose:
        from memtrace.tracer.studies.whatif import what_if as compute

        _, rows = compute(request, result)
    if what_if:
        data["what_if"] = [r.to_json() for r in rows]
    if diagnose:
        from memtrace.tracer.studies.diagnosis import diagnose as compute_diagnosis

        data["diagnosis"] = compute_diagnosis(request, result, rows).to_json()


def _add_map(data: dict[str, Any], request: Request, graph_file: Path | None, show_layers: bool) -> None:
    """The fx map: exported with --graph; how it would be made, for the layer table, with --layers."""
    if graph_file is not None:
        from memtrace.tracer.studies.mapping import export, map_request

        mapped = map_request(request)
        export(mapped, graph_file)
        data["map_line"] = f"{mapped.path_line()}; graph written to {graph_file}"
        data["map"] = {
            "path": mapped.fxmap.path.value,
            "reason": mapped.fxmap.reason,
            "file": str(graph_file),
        }
    elif show_layers:
        from memtrace.tracer.studies.mapping import map_path

        data["map_line"] = map_path(request)


def _export(
    recorded: Trace | None,
    result: Result,
    request: Request,
    snapshot_file: Path | None,
    trace_file: Path | None,
) -> None:
    """--export-snapshot and --export-trace, from the recorded trace (placed on cuda, as the figures)."""
    if recorded is None or (snapshot_file is None and trace_file is None):
        return
    from memtrace.tracer.devices.gpu import allocator_config

    config = allocator_config(request.config.alloc_conf) if result.device == "cuda" else None
    if snapshot_file is not None:
        from memtrace.tracer.outputs.export_snapshot import memory_snapshot, write_snapshot

        write_snapshot(memory_snapshot(recorded, config), snapshot_file)
    if trace_file is not None:
        from memtrace.tracer.outputs.export_trace import chrome_trace, write_trace

        write_trace(chrome_trace(*_device_trace(recorded, result, config)), trace_file)


def _device_trace(recorded: Trace, result: Result, config: Any) -> tuple[Trace, Result, tuple[int, ...]]:
    """The trace with each storage's bytes as the device counts them, and reserved bytes per event."""
    if result.device != "cuda":
        return recorded, result, ()
    from memtrace.tracer.devices.cuda.placement import place
    from memtrace.tracer.devices.cuda.served import serve

    placed, _ = place(recorded, config)
    return placed, result, tuple(s.reserved for s in serve(recorded, config).events)


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
