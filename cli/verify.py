"""`memtrace verify MODEL ...`: run the real step on this machine and hold the prediction against it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from memtrace.cli.common import (
    ToleranceType,
    engine_options,
    file_option,
    make_request,
    user_stdout_to_stderr,
    writable,
)


@click.command("verify", short_help="Run the real step here and compare it with the prediction.")
@engine_options
@click.option(
    "--tolerance",
    type=ToleranceType(),
    default="1%",
    show_default=True,
    help="Exit 1 when a figure's error exceeds this: a percentage (1%) or a fraction (0.01).",
)
@file_option(
    "--snapshot",
    text="On CUDA, also record a memory snapshot of the real run (torch.cuda.memory._dump_snapshot).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def verify(tolerance: float, snapshot: Path | None, as_json: bool, **options: Any) -> None:
    """Simulate the step of MODEL, run it for real on --device (cuda or cpu), and compare each figure."""
    from memtrace.tracer.core.assume import needed
    from memtrace.tracer.core.errors import DataDependentError
    from memtrace.tracer.real.measure import CudaMeasured, measure_request, on_this_gpu
    from memtrace.tracer.real.verify import cpu_checks, cuda_checks, failing
    from memtrace.tracer.simulate import run

    writable(snapshot, "--snapshot", (".pickle",))
    request = on_this_gpu(make_request(**options))
    with user_stdout_to_stderr(as_json):
        try:
            result = run(request)
        except DataDependentError:  # the values that let it run, measured, then the error
            _print_measured(measure_request(request, observe=True).assumptions)
            raise
        measured = measure_request(request, snapshot, observe=bool(result.assumptions))
    replay = needed(measured.assumptions, {a.op for a in result.assumptions})
    if isinstance(measured, CudaMeasured):
        checks = cuda_checks(result, measured.allocated_peak, measured.reserved_peak, measured.requested_peak)
    else:
        checks = cpu_checks(result, measured.peak)
    compiled = any(n.startswith("torch.compile: ") for n in result.notes)
    first_step = getattr(measured, "first_step_s", None) if compiled else None
    bad = failing(checks, tolerance)
    if as_json:
        data = {
            "device": result.device,
            "tolerance": tolerance,
            "checks": [c.to_json() for c in checks],
            "measured_assumptions": [f"{k}={v}" for k, v in replay],
            **({"first_step_s": round(first_step, 3)} if first_step is not None else {}),
        }
        click.echo(json.dumps({**data, "ok": not bad}, indent=2))
    else:
        _print(result.device, checks, tolerance)
        _print_measured(replay)
        if first_step is not None:
            click.echo(
                f"compiled: the real run's first step, compiling included, took {first_step:.1f} s; "
                "the step measured is the one after it"
            )
    if bad:
        sys.exit(1)


def _print_measured(pairs: tuple[tuple[str, str], ...]) -> None:
    if pairs:
        given = " ".join(f"--assume {k}={v}" for k, v in pairs)
        click.echo(f"the real step's data-dependent values (replay them with): {given}", err=True)


def _print(device: str, checks: Any, tolerance: float) -> None:
    table = Table(title=f"predicted vs measured on {device}", title_justify="left", show_edge=False)
    for col in ("figure", "predicted", "measured", "error"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for c in checks:
        err = f"{100 * c.error:+.4f}%"
        style = "red" if abs(c.error) > tolerance else "green"
        table.add_row(c.figure, f"{c.predicted:,}", f"{c.measured:,}", f"[{style}]{err}[/]")
    (Console() if Console().is_terminal else Console(width=120)).print(table)
