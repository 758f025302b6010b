"""One self-contained HTML file for a result: the summary, the timeline (inline SVG), the layer table, the
diagnosis and the what-if rows. Nothing is fetched: no script, no stylesheet link, no font, no image URL;
the SVG draws its text as paths. The terminal tables are rendered by rich with the same colours.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable

from rich.console import Console

from memtrace.tracer.layers import totals
from memtrace.tracer.plots import svg_text, timeline_figure
from memtrace.tracer.records import LayerRow, Result
from memtrace.tracer.report import diagnosis_view, summary, what_if_table
from memtrace.tracer.saved import Saved
from memtrace.tracer.specs import human_bytes, short_bytes

WIDTH = 150  # columns of the rich tables
_STYLE = """
body { font-family: system-ui, 'DejaVu Sans', sans-serif; margin: 24px auto; max-width: 1240px;
       color: #1a1a1a; background: #ffffff; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
pre.rich { font-family: 'DejaVu Sans Mono', Menlo, Consolas, monospace; font-size: 12.5px; line-height: 1.35;
           background: #fafafa; border: 1px solid #e4e4e4; padding: 12px; overflow-x: auto; }
table.layers { border-collapse: collapse; font-size: 13px; }
table.layers th, table.layers td { padding: 3px 10px; border-bottom: 1px solid #e4e4e4; text-align: right; }
table.layers td.name, table.layers th.name { text-align: left; font-family: monospace; }
table.layers tfoot td { font-weight: bold; border-top: 2px solid #999; }
.swatch { display: inline-block; width: 11px; height: 11px; margin-right: 5px; vertical-align: middle; }
.legend span { margin-right: 16px; font-size: 13px; }
.figure svg { width: 100%; height: auto; }
"""


def _rich(render: Callable[[Console], None]) -> str:
    console = Console(
        record=True, width=WIDTH, force_terminal=True, color_system="truecolor", file=io.StringIO()
    )
    render(console)
    code = console.export_html(inline_styles=True, code_format="{code}")
    return f'<pre class="rich">{code}</pre>'


def layer_rows_html(rows: tuple[LayerRow, ...]) -> str:
    head = ("layer", "type", "output", "params", "param bytes", "grad + optim", "saved acts", "at peak")

    def cells(r: LayerRow, name: str) -> list[str]:
        shape = "x".join(map(str, r.output_shape)) or "-"
        return [
            name,
            r.type,
            shape,
            f"{r.parameters:,}",
            short_bytes(r.parameter_bytes),
            short_bytes(r.gradient_bytes + r.optimizer_bytes),
            short_bytes(r.activation_bytes),
            short_bytes(r.peak_bytes),
        ]

    def row(values: list[str], tag: str = "td") -> str:
        first = f'<{tag} class="name">{html.escape(values[0])}</{tag}>'
        return "<tr>" + first + "".join(f"<{tag}>{html.escape(v)}</{tag}>" for v in values[1:]) + "</tr>"

    body = "".join(row(cells(r, "\u00a0\u00a0" * max(r.depth - 1, 0) + r.name)) for r in rows)
    total = totals(rows)
    foot = row(["total", "", "", *cells(total, "total")[3:]])
    return (
        f'<table class="layers"><thead>{row(list(head), "th")}</thead><tbody>{body}</tbody>'
        f"<tfoot>{foot}</tfoot></table>"
    )


def html_report(saved: Saved) -> str:
    """The whole page."""
    result = saved.result
    parts = [
        f"<h1>memtrace: {html.escape(result.model.name)}</h1>",
        f"<p>{html.escape(_subtitle(result))}</p>",
        "<h2>Memory over the step</h2>",
        f'<div class="figure">{_timeline_svg(result)}</div>',
        "<h2>Summary</h2>",
        _rich(lambda c: c.print(summary(result))),
    ]
    if saved.layers:
        parts += [f"<h2>Layers (depth {saved.depth})</h2>", layer_rows_html(saved.layers)]
    if saved.diagnosis is not None:
        diag = saved.diagnosis
        parts += ["<h2>Diagnosis</h2>", _rich(lambda c: c.print(diagnosis_view(result, diag)))]
    if saved.what_if is not None:
        rows = saved.what_if
        parts += ["<h2>What if</h2>", _rich(lambda c: c.print(what_if_table(result, rows)))]
    title = html.escape(f"memtrace: {result.model.name}, peak {human_bytes(result.peak_bytes)}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def _subtitle(result: Result) -> str:
    inputs = ", ".join(i.text() for i in result.inputs)
    return (
        f"{result.mode} step on {result.device}, inputs {inputs}; peak {human_bytes(result.peak_bytes)} "
        f"during {result.peak.phase.value}"
    )


def _timeline_svg(result: Result) -> str:
    if result.timeline is None:
        return "<p>(this result was saved without a timeline)</p>"
    return svg_text(timeline_figure(result))
