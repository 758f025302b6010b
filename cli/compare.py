"""`memtrace compare RESULT.json REAL`: hold a saved prediction against a real GPU run."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from memtrace.tracer.core.specs import human_bytes


@click.command("compare", short_help="Compare a saved prediction with a real run's snapshot.")
@click.argument("result_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("real", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def compare(result_file: Path, real: Path, as_json: bool) -> None:
    """RESULT_FILE is memtrace's JSON (--output); REAL a torch.cuda.memory._dump_snapshot pickle of the same
    step on your GPU (never unpickled with pickle.load: plain data only), or a memtrace monitor JSON."""
    from memtrace.tracer.real.compare import compare as run_compare
    from memtrace.tracer.real.compare import load_result

    result = load_result(result_file)
    cmp = run_compare(result, real)
    if as_json:
        click.echo(json.dumps(cmp.to_json(), indent=2))
        return
    console = Console() if Console().is_terminal else Console(width=140)
    table = Table(title="predicted vs real", title_justify="left", show_edge=False)
    for col in ("figure", "predicted", "real", "error"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for f in cmp.figures:
        table.add_row(f.figure, human_bytes(f.predicted), human_bytes(f.measured), f"{100 * f.error:+.2f}%")
    console.print(table)
    if cmp.real_largest:
        console.print("\nLargest real allocations:")
        for a in cmp.real_largest:
            mark = "" if a.nbytes not in cmp.unmatched_real else "  (no predicted tensor of this size)"
            console.print(f"  {human_bytes(a.nbytes)}  {a.where or '-'}{mark}")
    for p in cmp.unmatched_predicted:
        console.print(f"  predicted {human_bytes(p)} at the peak matches no large real allocation")
