"""`memtrace bench [CASES...]`: run the benchmark suite, write versioned JSON, gate against a baseline."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from memtrace.cli.common import ToleranceType, file_option, user_stdout_to_stderr, writable
from memtrace.tracer.core.errors import MemtraceError

if TYPE_CHECKING:  # the bench records, without importing them at the CLI's start
    from memtrace.tracer.real.bench import BenchRun, Case, Move


@click.command("bench", short_help="Run the benchmark suite; gate peaks against a baseline.")
@click.argument("cases", nargs=-1)
@file_option(
    "--suite",
    "suite_path",
    text="A suite file defining SUITE, a tuple of memtrace.tracer.real.bench.Case "
    "[default: benchmarks/suite.py].",
)
@click.option(
    "--filter", "text", default=None, help="Only cases with this tag (ci) or this text in the name."
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="Whose allocator to model, and to measure on (cuda without a GPU: predicted only).",
)
@click.option("--no-measure", is_flag=True, help="Simulate only: no real step, no error gate.")
@file_option("--output", text="Write the JSON.")
@file_option("--baseline", text="A stored bench JSON: exit 1 when a peak grew by more than --threshold.")
@click.option("--threshold", type=ToleranceType(), default="1%", show_default=True, help="Allowed growth.")
@click.option(
    "--tolerance", type=ToleranceType(), default="1%", show_default=True, help="Allowed prediction error."
)
@click.option(
    "--update-baseline", is_flag=True, help="Write this run (merged) to --baseline instead of gating."
)
def bench(
    cases: tuple[str, ...],
    suite_path: Path | None,
    text: str | None,
    device: str,
    no_measure: bool,
    output: Path | None,
    baseline: Path | None,
    threshold: float,
    tolerance: float,
    update_baseline: bool,
) -> None:
    """Simulate (and, unless --no-measure, measure) each case of the suite; with --baseline, exit 1 when a
    predicted or measured peak grew by more than --threshold; exit 1 when a prediction's error exceeds
    --tolerance or a case fails."""
    from memtrace.tracer.real import bench as pure
    from memtrace.tracer.real.bench_run import DEFAULT_SUITE, load_suite

    if update_baseline and baseline is None:
        raise MemtraceError("--update-baseline writes the --baseline FILE: give one")
    writable(output, "--output", (".json",))
    writable(baseline if update_baseline else None, "--baseline", (".json",))
    old = _read(baseline) if baseline is not None and (baseline.exists() or not update_baseline) else None
    suite = load_suite(suite_path or DEFAULT_SUITE)
    try:
        chosen = pure.select(suite, cases, text)
    except ValueError as exc:
        raise MemtraceError(str(exc)) from None
    if not chosen:
        raise MemtraceError(f"no case matches --filter {text!r}")
    run = _run(chosen, device, not no_measure)
    if output is not None:
        output.write_text(json.dumps(run.to_json(), indent=2) + "\n")
    console = Console(width=120) if not Console().is_terminal else Console()
    _print_run(run, console)
    bad = _gates(run, old, threshold, tolerance, update_baseline, console)
    if update_baseline and baseline is not None:
        baseline.write_text(json.dumps(pure.merged(old, run).to_json(), indent=2) + "\n")
        console.print(f"baseline written: {baseline}")
    if bad:
        sys.exit(1)


def _read(path: Path) -> BenchRun:
    from memtrace.tracer.real.bench import BenchRun

    try:
        return BenchRun.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise MemtraceError(f"--baseline {path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MemtraceError(f"--baseline {path}: not JSON ({exc})") from None
    except ValueError as exc:
        raise MemtraceError(f"--baseline {path}: {exc}") from None


def _run(chosen: Sequence[Case], device: str, measure: bool) -> BenchRun:
    """The cases under a progress bar on stderr; what the models print goes there too."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from memtrace.tracer.real.bench_run import bench_run, run_case

    rows = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("bench", total=len(chosen))
        for case in chosen:
            progress.update(task, description=f"bench {case.name}")
            with user_stdout_to_stderr(True):
                rows.append(run_case(case, device, measure))
            progress.advance(task)
    return bench_run(rows, device, measure)


def _gates(
    run: BenchRun, old: BenchRun | None, threshold: float, tolerance: float, updating: bool, console: Console
) -> bool:
    """Print what moved and the prediction errors; True when any gate fails."""
    from memtrace.tracer.real import bench as pure

    errors = pure.errors(run, tolerance)
    bad = any(m.failing for m in errors) or bool(pure.failed_cases(run))
    if old is not None and not updating:
        moves = pure.growth(run, old, threshold)
        skipped = sorted({m.why for m in moves if m.change is None})
        moves = [m for m in moves if m.change is not None]
        for why in skipped:
            console.print(f"Growth gate skipped: {escape(why.removeprefix('not compared: '))}")
        if moves:
            console.print(_moves_table(moves, threshold))
        elif not skipped:
            console.print("No peak moved from the baseline.")
        bad = bad or any(m.failing for m in moves)
    failing = [m for m in errors if m.failing]
    for m in failing:
        console.print(
            f"[red]{m.case}: {m.figure} predicted with error {100 * (m.change or 0):+.4f}% "
            f"(tolerance {100 * tolerance:g}%)[/]"
        )
    for c in pure.failed_cases(run):
        console.print(f"[red]{c.name} failed: {escape(c.reason)}[/]")
    return bad


def _moves_table(moves: Sequence[Move], threshold: float) -> Table:
    table = Table(
        title=f"What moved from the baseline (threshold {100 * threshold:g}%)", title_justify="left"
    )
    for col in ("case", "figure", "baseline", "now", "change", "why"):
        table.add_column(col, justify="right" if col in ("baseline", "now", "change") else "left")
    for m in moves:
        change = "-" if m.change is None else f"{100 * m.change:+.3f}%"
        style = "red" if m.failing else ("green" if (m.change or 0) < 0 else "")
        table.add_row(
            m.case,
            f"{m.kind} {m.figure}",
            _n(m.baseline),
            _n(m.current),
            f"[{style}]{change}[/]" if style else change,
            escape(m.why),
        )
    return table


def _print_run(run: BenchRun, console: Console) -> None:
    table = Table(title=f"memtrace bench on {run.device}", title_justify="left", show_edge=False)
    for col in ("case", "predicted", "reserved", "measured", "error", "simulate s", "real s", "note"):
        table.add_column(col, justify="left" if col in ("case", "note") else "right")
    for c in run.cases:
        p, m = c.predicted, c.measured
        err = c.error("allocated")
        table.add_row(
            c.name,
            _n(p.allocated if p else None),
            _n(p.reserved if p else None),
            _n(m.allocated if m else None),
            "-" if err is None else f"{100 * err:+.4f}%",
            _s(c.simulate_seconds),
            _s(c.real_seconds),
            escape(c.reason or c.dominant),
        )
    console.print(table)


def _n(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
