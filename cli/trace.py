"""`memtrace MODEL --input SHAPE`: simulate one training (or inference) step and explain its memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from memtrace.cli.common import GpuType, HeadroomType, engine_options
from memtrace.tracer.records import GpuSpec, InputSpec
from memtrace.tracer.specs import Headroom, OptimizerSpec


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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the summary.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the JSON result to this file.",
)
def trace(
    model: str,
    inputs: tuple[InputSpec, ...],
    args: tuple[tuple[str, Any], ...],
    mode: str,
    device: str,
    optimizer: OptimizerSpec,
    gpu: GpuSpec | None,
    headroom: Headroom,
    as_json: bool,
    output: Path | None,
) -> None:
    """Simulate a step of MODEL (FILE.py:FUNC or package.module:FUNC) on the meta device."""
    from memtrace.tracer.report import render
    from memtrace.tracer.simulate import simulate

    result = simulate(
        model,
        inputs,
        builder_kwargs=dict(args),
        mode=mode,
        optimizer=optimizer,
        device=device,
        gpu=gpu,
        headroom=headroom,
    )
    data = result.to_json()
    if output is not None:
        output.write_text(json.dumps(data, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        render(result, Console())
