"""`memtrace MODEL --input SHAPE`: simulate one training (or inference) step and explain its memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from memtrace.cli.common import GpuType, HeadroomType, engine_options, make_request


@click.command("trace")
@engine_options
@click.option(
    "--gpu", type=GpuType(), default=None, help="A GPU name (rtx4070, a100-80gb, ...) or size (12GB)."
)
@click.option(
    "--headroom",
    type=HeadroomType(),
    default="auto",
    show_default=True,
    help="Memory kept free on the GPU: 0, 1GB, 5%; auto = CUDA context estimate + 5%.",
)
@click.option(
    "--what-if",
    "what_if",
    is_flag=True,
    help="Also simulate each single change (autocast, checkpointing, accumulation, SGD) and tabulate.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the summary.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the JSON result to this file.")  # fmt: skip
def trace(what_if: bool, as_json: bool, output: Path | None, **options: Any) -> None:
    """Simulate a step of MODEL (FILE.py:FUNC or package.module:FUNC) on the meta device."""
    from memtrace.tracer.report import render, what_if_table
    from memtrace.tracer.simulate import run

    request = make_request(**options)
    result = run(request)
    data = result.to_json()
    rows = []
    if what_if:
        from memtrace.tracer.whatif import what_if as compute

        _, rows = compute(request, result)
        data["what_if"] = [row_json(r) for r in rows]
    if output is not None:
        output.write_text(json.dumps(data, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    console = Console() if Console().is_terminal else Console(width=120)
    render(result, console)
    if what_if:
        console.print(what_if_table(result, rows))


def row_json(row: Any) -> dict[str, Any]:
    return {
        "change": row.change,
        "flags": row.flags,
        "peak_bytes": row.peak_bytes,
        "saved_bytes": row.saved_bytes,
        "saved_fraction": round(row.saved_fraction, 6),
        "flops_ratio": round(row.flops_ratio, 6),
        "effective_batch": row.effective_batch,
        "error": row.error,
    }
