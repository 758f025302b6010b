"""`memtrace show RESULT.json`: a saved result's report again, and its pictures, without re-tracing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from memtrace.cli.common import file_option, plot_option, writable
from memtrace.tracer.core.errors import MemtraceError

if TYPE_CHECKING:
    from memtrace.tracer.outputs.saved import Saved


@click.command("show", short_help="Re-render a saved result (--output) without re-tracing.")
@click.argument("result_file", metavar="RESULT.json", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--layers", "show_layers", is_flag=True, help="Print the per-layer table (as saved).")
@plot_option("Write the memory timeline: FILE.png or FILE.svg.")
@file_option("--html", "html_file", text="Write a self-contained HTML report.")
def show(result_file: Path, show_layers: bool, plot_file: Path | None, html_file: Path | None) -> None:
    """Print the report of RESULT.json (written by `memtrace ... --output`) as it was printed then."""
    from memtrace.tracer.outputs.report import render, report_console
    from memtrace.tracer.outputs.saved import Saved

    writable(plot_file, "--plot", (".png", ".svg"))
    writable(html_file, "--html", (".html", ".htm"))
    saved = Saved.from_json(read_result(result_file))
    render(saved, report_console(), layers=show_layers)
    write_pictures(saved, plot_file, html_file)


def read_result(path: Path) -> dict[str, object]:
    """The JSON object of a saved result; one-line errors for a missing, malformed or foreign file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MemtraceError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MemtraceError(f"{path}: not a memtrace result (JSON expected): {exc}") from None
    if not isinstance(data, dict) or "peak" not in data or "schema" not in data:
        raise MemtraceError(f"{path}: not a memtrace result (written by memtrace ... --output)")
    from memtrace.tracer.core.records import READABLE_SCHEMAS

    if data["schema"] not in READABLE_SCHEMAS:
        raise MemtraceError(f"{path}: result schema {data['schema']!r} is not one this memtrace reads")
    return data


def write_pictures(saved: Saved, plot_file: Path | None, html_file: Path | None) -> None:
    """--plot and --html, shared with `trace`."""
    if plot_file is not None:
        from memtrace.tracer.outputs import plots

        plots.render(saved, plot_file)
    if html_file is not None:
        from memtrace.tracer.outputs import html_report

        html_report.render(saved, html_file)
