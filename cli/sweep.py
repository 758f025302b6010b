"""`memtrace sweep MODEL --input Bx3xHxW --set B=1,2,4 --set HxW=144x256,1080x1920`: every combination."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from memtrace.cli.common import (
    GpuType,
    engine_options,
    headroom_option,
    make_request,
    plot_option,
    user_stdout_to_stderr,
    writable,
)
from memtrace.tracer.core.records import GpuSpec
from memtrace.tracer.core.specs import Headroom, short_bytes


class SetType(click.ParamType):  # type: ignore[type-arg]
    name = "SYMS=V,V,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        names, sep, values = value.partition("=")
        keys = names.strip().split("x")
        if not sep or not all(k.isidentifier() and k.isupper() for k in keys):
            self.fail(f"malformed --set {value!r}: expected B=1,2,4 or HxW=144x256,1080x1920", param, ctx)
        rows = []
        for item in values.split(","):
            parts = item.strip().split("x")
            if len(parts) != len(keys) or not all(p.isdigit() and int(p) > 0 for p in parts):
                self.fail(
                    f"malformed --set value {item!r} for {names}: {len(keys)} positive integers", param, ctx
                )
            rows.append(tuple(int(p) for p in parts))
        return names.strip(), rows


@click.command("sweep", short_help="A table over every combination of --set values.")
@engine_options
@click.option(
    "--set",
    "sets",
    multiple=True,
    type=SetType(),
    required=True,
    help="Values of symbols: B=1,2,4,8 or HxW=144x256,540x960; repeatable, one per symbol group.",
)
@click.option("--gpu", "gpus", multiple=True, type=GpuType(), help="A verdict against this GPU; repeatable.")
@headroom_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "markdown"]),
    default="table",
    show_default=True,
)
@plot_option("Write the figure: peak (and reserved) against the longest --set, budgets, the largest fit.")
def sweep(
    sets: tuple[Any, ...],
    gpus: tuple[GpuSpec, ...],
    headroom: Headroom,
    fmt: str,
    plot_file: Path | None,
    **options: Any,
) -> None:
    """Simulate every combination of the --set values and tabulate peak and verdicts."""
    from memtrace.tracer.studies.fit import budget_of, parse_sets
    from memtrace.tracer.studies.fit import sweep as compute

    writable(plot_file, "--plot", (".png", ".svg"))
    axes = parse_sets(list(sets))
    request = make_request(**options, headroom=headroom)
    total = 1
    for axis in axes:
        total *= len(axis)
    with user_stdout_to_stderr(fmt != "table"), Progress(transient=True, disable=fmt != "table") as bar:
        task = bar.add_task("simulating", total=total)
        rows = compute(request, axes, list(gpus), headroom, lambda: bar.advance(task))
    if plot_file is not None:
        from memtrace.tracer.outputs.plots import save, sweep_figure

        budgets = [(g.name, budget_of(g, headroom, request.config.device)) for g in gpus]
        save(sweep_figure(rows, axes, budgets), plot_file)
    click.echo(render(rows, list(gpus), fmt, request.config.mode == "generate"), nl=False)


HEAD = ["input", "model states", "activations", "peak", "reserved"]
SERVING = ["kv cache", "peak phase"]  # --mode generate: the cache at the peak, and where the peak falls


def _cells(row: Any, gpus: list[GpuSpec], serving: bool = False) -> list[str]:
    extra = SERVING if serving else []
    if row.error:
        return ["error: " + row.error] + [""] * (len(HEAD) + len(extra) - 1 + len(gpus))
    sizes = [row.input_bytes, row.model_state_bytes, row.activation_bytes, row.peak_bytes]
    reserved = short_bytes(row.reserved_bytes) if row.reserved_bytes else "-"
    cells = [*(short_bytes(s) for s in sizes), reserved]
    if serving:
        cells += [short_bytes(row.kv_cache_bytes), _phase(row)]
    return cells + [_WORDS.get(row.status.get(g.name, ""), "OOM") for g in gpus]


def _phase(row: Any) -> str:
    """`decode, token 511`: the peak's phase, and its decode step."""
    return str(row.peak_phase) + (f", token {row.token_index}" if row.token_index is not None else "")


_WORDS = {"fits": "fits", "borderline": "borderline", "does_not_fit": "OOM"}


def render(rows: list[Any], gpus: list[GpuSpec], fmt: str, serving: bool = False) -> str:
    """The rows as a table, CSV, JSON or Markdown; `serving` (--mode generate) adds the KV cache and the
    peak's phase."""
    keys = list(rows[0].values) if rows else []
    if fmt == "json":
        return json.dumps([r.to_json(serving) for r in rows], indent=2) + "\n"
    header = keys + [f"{h}" for h in HEAD] + (SERVING if serving else []) + [g.name for g in gpus]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(
            keys
            + ["input_bytes", "model_state_bytes", "activation_bytes", "peak_bytes", "reserved_bytes"]
            + (["kv_cache_bytes", "peak_phase", "token_index"] if serving else [])
            + [f"fits_{g.name}" for g in gpus]
            + [f"status_{g.name}" for g in gpus]
            + ["error"]
        )
        for r in rows:
            writer.writerow(
                [r.values[k] for k in keys]
                + [r.input_bytes, r.model_state_bytes, r.activation_bytes, r.peak_bytes, r.reserved_bytes]
                + ([r.kv_cache_bytes, r.peak_phase, _index(r.token_index)] if serving else [])
                + [r.fits.get(g.name, "") for g in gpus]
                + [r.status.get(g.name, "") for g in gpus]
                + [r.error]
            )
        return buf.getvalue()
    body = [[str(r.values[k]) for k in keys] + _cells(r, gpus, serving) for r in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body]) + "\n"
    table = Table(show_edge=False)
    for h in header:
        table.add_column(h, justify="right")
    for b in body:
        table.add_row(*b)
    console = Console(width=160, record=True, force_terminal=False)
    with console.capture() as cap:
        console.print(table)
    return cap.get()


def _index(token: int | None) -> str:
    return "" if token is None else str(token)
