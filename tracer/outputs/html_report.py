"""One self-contained HTML file for a result: the run, the timeline, and every table the terminal report
prints (summary, categories, phases, largest tensors, layers at the peak, the layer table, diagnosis,
what-ifs) as HTML tables built from the records, numbers right-aligned. The timeline is drawn once, as a
PNG in a `data:` URI; nothing is fetched: no script, no stylesheet link, no font, no URL.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from rich.text import Text

from ..analysis.layers import totals
from ..core.records import Category, LayerRow, Result
from ..core.specs import human_bytes, short_bytes
from .palette import CATEGORY_COLOURS
from .plots import DPI, HTML_DPI, SIZE_INCHES, png_base64, timeline_figure
from .report import CATEGORY_LABELS, dominant_line, header, layer_cells, verdict_line
from .saved import Saved

if TYPE_CHECKING:
    from ..core.studies import Diagnosis, WhatIfRow

_STYLE = """
body { font-family: system-ui, 'DejaVu Sans', sans-serif; margin: 24px auto; max-width: 1240px;
       padding: 0 16px; color: #1a1a1a; background: #ffffff; font-size: 14px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 30px; }
p.run { line-height: 1.5; margin: 6px 0 0; }
.s-bold { font-weight: bold; } .s-green { color: #1b7f3b; } .s-red { color: #c62828; }
.s-yellow { color: #8a6d00; } .s-dim { color: #666; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 18px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid #999; background: #f6f6f6; }
tbody tr:nth-child(even) { background: #fafafa; }
tfoot td { font-weight: bold; border-top: 2px solid #999; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.code { font-family: 'DejaVu Sans Mono', Menlo, Consolas, monospace; font-size: 12px; }
td.layer { font-family: 'DejaVu Sans Mono', Menlo, Consolas, monospace; white-space: pre; }
.swatch { display: inline-block; width: 11px; height: 11px; margin-right: 6px; vertical-align: middle; }
.dim { color: #666; }
figure { margin: 8px 0; } figure img { max-width: 100%; height: auto; display: block; }
"""


class Raw(str):
    """A cell's HTML, already escaped (a swatch); a plain str is escaped."""


@dataclass(frozen=True)
class Col:
    name: str
    num: bool = False  # right-aligned figures
    kind: str = ""  # an extra class: "code" (flags), "layer" (indented names)


def _cell(value: str, col: Col, tag: str = "td") -> str:
    text = value if isinstance(value, Raw) else html.escape(value)
    classes = " ".join(c for c in ("num" if col.num else "", col.kind if tag == "td" else "") if c)
    scope = ' scope="col"' if tag == "th" else ""
    return f"<{tag}{scope}" + (f' class="{classes}"' if classes else "") + f">{text}</{tag}>"


def table(
    caption: str, cols: Sequence[Col], rows: Iterable[Sequence[str]], foot: Sequence[str] | None = None
) -> str:
    """A <table> with its caption, <thead>, <tbody> and, with `foot`, a <tfoot> (a totals line)."""

    def tr(values: Sequence[str]) -> str:
        return "<tr>" + "".join(_cell(v, c) for v, c in zip(values, cols, strict=True)) + "</tr>"

    head = "<tr>" + "".join(_cell(c.name, c, "th") for c in cols) + "</tr>"
    body = "".join(tr(r) for r in rows)
    tail = f"<tfoot>{tr(foot)}</tfoot>" if foot is not None else ""
    return (
        f"<table><caption>{html.escape(caption)}</caption><thead>{head}</thead>"
        f"<tbody>{body}</tbody>{tail}</table>"
    )


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _shape(shape: tuple[int, ...], empty: str = "-") -> str:
    return "x".join(map(str, shape)) or empty


def _category(cat: Category) -> Raw:
    colour = CATEGORY_COLOURS[cat]
    swatch = f'<span class="swatch" style="background:{colour}"></span>'
    return Raw(swatch + html.escape(CATEGORY_LABELS.get(cat, cat.value)))


def text_html(text: Text) -> str:
    """A terminal line group (rich Text) as HTML: lines broken with <br>, each styled run in a span whose
    classes are its style's words (`bold green` -> s-bold s-green), so the page words the verdict, the
    notes and the assumptions as the terminal does."""
    plain = text.plain
    out: list[str] = []
    at = 0
    for span in sorted(text.spans, key=lambda s: s.start):
        if span.start < at:  # nested or overlapping: the outer run's style holds
            continue
        out.append(html.escape(plain[at : span.start]))
        classes = " ".join(f"s-{w}" for w in str(span.style).split() if w.isalpha())
        out.append(f'<span class="{classes}">{html.escape(plain[span.start : span.end])}</span>')
        at = span.end
    out.append(html.escape(plain[at:]))
    lines = "".join(out).strip("\n").split("\n")
    return "<br>".join(line.strip() for line in lines)


_FIGURE_COLS = (Col("figure"), Col("size", num=True), Col("bytes", num=True), Col("where, what"))


def summary_table(result: Result) -> str:
    """The peak, the first iteration's, the CUDA allocator's figures and the budget: each in the report's
    units and in bytes."""
    p = result.peak
    where = f"during {p.phase.value}, op {p.op or '-'}" + (f" in {p.module}" if p.module else "")
    rows = [_figure_row("peak (steady-state iteration)", p.bytes, where)]
    if result.first_iteration_peak > p.bytes:
        rows.append(_figure_row("first iteration's peak", result.first_iteration_peak, "higher"))
    rows += _cuda_rows(result)
    v = result.verdict
    if v is not None:
        rows.append(_figure_row(f"{v.gpu.name} memory", v.gpu.bytes, ""))
        held = "reserved memory held against it" if v.basis == "reserved" else "the peak held against it"
        rows.append(_figure_row("budget", v.budget_bytes, f"GPU memory less the headroom; {held}"))
        spare = "to spare" if v.spare_bytes >= 0 else "short (more needed)"
        rows.append(_figure_row(spare, abs(v.spare_bytes), "by the simulation: budget less the figure held"))
    return table("Peak and budget, in the report's units and in bytes", _FIGURE_COLS, rows)


def _figure_row(name: str, nbytes: int, note: str) -> list[str]:
    return [name, human_bytes(nbytes), f"{nbytes:,}", note]


def _cuda_rows(result: Result) -> list[list[str]]:
    c = result.cuda
    if c is None:
        return []
    arch = f"sm{c.compute_capability.replace('.', '')}"
    assumed = " (assumed: an A100; --gpu PRESET names the GPU)" if c.compute_capability_assumed else ""
    rows = [
        _figure_row(
            "allocated", c.allocated_peak_bytes, f"torch.cuda.max_memory_allocated, for {arch}{assumed}"
        ),
        _figure_row("requested", c.requested_peak_bytes, "the sizes asked for"),
        _figure_row("reserved", c.reserved_peak_bytes, "torch.cuda.max_memory_reserved"),
        _figure_row("cached but unused", c.fragmentation_bytes, "at the reserved peak (fragmentation)"),
        _figure_row("CUDA context", c.context_bytes_estimate, "estimate"),
        _figure_row("nvidia-smi", c.nvidia_smi_estimate_bytes, "estimate: reserved + the CUDA context"),
    ]
    if c.cudnn_workspace_estimate is not None:
        low, high = c.cudnn_workspace_estimate["low_bytes"], c.cudnn_workspace_estimate["high_bytes"]
        note = (
            f"not in the peak: +{human_bytes(low)}..+{human_bytes(high)}, one call's, by cuDNN's heuristics"
        )
        rows.append(_figure_row("cuDNN conv workspace, at most", high, note))
    for r in c.ranges:
        rows.append(_figure_row(f"{r.what}, up to", r.extra_bytes, f"a range above the figure: {r.cause}"))
    return rows


def category_table(result: Result) -> str:
    cols = (
        Col("category"),
        Col("bytes", num=True),
        Col("size", num=True),
        Col("share", num=True),
        Col("allocated in the step", num=True),
    )
    by_cat, total = result.peak.by_category, result.peak.bytes
    rows = [
        [
            _category(c),
            f"{by_cat.get(c, 0):,}",
            short_bytes(by_cat.get(c, 0)),
            _share(by_cat.get(c, 0), total),
            short_bytes(result.totals.get(c, 0)),
        ]
        for c in CATEGORY_LABELS
        if by_cat.get(c, 0) or result.totals.get(c, 0)
    ]
    foot = ["total", f"{total:,}", short_bytes(total), "100%", ""]
    return table("Live at the peak, by category", cols, rows, foot)


def phase_table(result: Result) -> str:
    cols = (Col("phase"), Col("peak", num=True), Col("at op"), Col("in module"))
    rows = [[r.phase.value, short_bytes(r.bytes), r.op, r.module or "-"] for r in result.phases]
    return table("Peak per phase", cols, rows)


def tensor_table(result: Result) -> str:
    cols = (Col("size", num=True), Col("category"), Col("shape"), Col("dtype"), Col("made by"), Col("layer"))
    rows = [
        [
            short_bytes(t.nbytes),
            _category(t.category),
            _shape(t.shape, "scalar"),
            t.dtype,
            t.op or "-",
            t.module or "-",
        ]
        for t in result.peak.top_tensors
    ]
    return table("Largest tensors at the peak", cols, rows)


def top_layers_table(result: Result) -> str:
    cols = (Col("layer"), Col("type"), Col("bytes", num=True), Col("share", num=True), Col("of which"))
    rows = [
        [
            layer.module or "(model)",
            layer.type,
            short_bytes(layer.bytes),
            _share(layer.bytes, result.peak.bytes),
            ", ".join(f"{CATEGORY_LABELS[c]} {short_bytes(b)}" for c, b in layer.by_category.items() if b),
        ]
        for layer in result.top_layers
    ]
    return table("Layers holding the most at the peak", cols, rows)


def verdict_html(result: Result) -> str:
    """The dominant layer and the verdict, worded as the terminal words them."""
    parts = [text_html(dominant_line(result)), text_html(verdict_line(result))]
    return "".join(f"<p>{p}</p>" for p in parts if p)


_LAYER_COLS = (
    Col("layer", kind="layer"),
    Col("type"),
    Col("output"),
    Col("params", num=True),
    Col("param bytes", num=True),
    Col("grad + optim", num=True),
    Col("saved acts", num=True),
    Col("at peak", num=True),
    Col("FLOPs", num=True),
)


def layer_breakdown_table(rows: tuple[LayerRow, ...], depth: int) -> str:
    """The per-layer table (--layers): names indented by depth, its totals line the summary's figures."""
    body = [layer_cells(r, "  " * max(r.depth - 1, 0) + r.name) for r in rows]
    foot = ["total", "", "", *layer_cells(totals(rows), "total")[3:]]
    return table(f"Layers (depth {depth})", _LAYER_COLS, body, foot)


def diagnosis_html(result: Result, diag: Diagnosis) -> str:
    """What dominates the peak and what each common fix would do, each fix simulated."""
    parts = []
    dom = diag.dominant
    if dom is not None:
        shares = ", ".join(f"{CATEGORY_LABELS[c]} {short_bytes(b)}" for c, b in dom.by_category.items() if b)
        text = (
            f"{dom.module or '(model)'} ({dom.type}) dominates: {short_bytes(dom.bytes)}, "
            f"{_share(dom.bytes, result.peak_bytes)} of the peak ({shares})"
        )
        parts.append(f"<p>{html.escape(text)}</p>")
    for h in diag.flatten_heads:
        c, hh, w = h.feature_map
        text = (
            f"{h.linear} is fed by {h.flatten} of a {c}x{hh}x{w} feature map: {h.in_features:,} inputs "
            f"x {h.out_features} outputs = {short_bytes(h.parameter_bytes)} of weights; a global-average-"
            f"pooling head ({c} inputs) would hold {short_bytes(h.gap_parameter_bytes)}"
        )
        parts.append(f"<p>{html.escape(text)}</p>")
    cols = (Col("change"), Col("new peak", num=True), Col("saved", num=True), Col("saved %", num=True))
    rows = [[*_change_cells(f)[:4], f.error[:60] if f.error else f.flags] for f in diag.fixes]
    parts.append(table("What would help (each re-simulated)", (*cols, Col("how", kind="code")), rows))
    return "".join(parts)


def _change_cells(row: WhatIfRow) -> list[str]:
    """change, peak, saved, saved %, FLOPs x (a failed or skipped row: its status, blank figures)."""
    if row.error:
        status = "skipped" if row.error.startswith("skipped") else "failed"
        return [row.change, status, "", "", ""]
    return [
        row.change,
        short_bytes(row.peak_bytes),
        short_bytes(row.saved_bytes),
        f"{100 * row.saved_fraction:.1f}%",
        f"{row.flops_ratio:.2f}",
    ]


def what_if_html(result: Result, rows: Sequence[WhatIfRow]) -> str:
    """One row per single change, each from its own simulation; the current step first."""
    cols = (
        Col("change"),
        Col("peak", num=True),
        Col("saved", num=True),
        Col("saved %", num=True),
        Col("FLOPs x", num=True),
        Col("flags", kind="code"),
    )
    current = ["current: " + result.recipe, short_bytes(result.peak_bytes), "-", "-", "1.00", ""]
    body = [current] + [[*_change_cells(r), r.error.removeprefix("skipped: ")[:60] or r.flags] for r in rows]
    return table("What if (each row simulated)", cols, body)


def picture_html(result: Result) -> str:
    """The timeline, drawn once: a PNG at HTML_DPI shown at the figure's size (sharp on HiDPI screens)."""
    if result.timeline is None:
        return "<p>(this result was saved without a timeline)</p>"
    width, height = (round(v * DPI) for v in SIZE_INCHES)
    alt = html.escape(
        f"memory over the step by category; peak {human_bytes(result.peak_bytes)} "
        f"during {result.peak.phase.value}"
    )
    data = png_base64(timeline_figure(result), HTML_DPI)
    return (
        f'<figure><img src="data:image/png;base64,{data}" width="{width}" height="{height}" '
        f'alt="{alt}"></figure>'
    )


def html_report(saved: Saved) -> str:
    """The whole page."""
    result = saved.result
    parts = [
        f"<h1>{html.escape(result.model.name)}: peak {human_bytes(result.peak_bytes)}</h1>",
        f'<p class="run">{text_html(header(result))}</p>',
        "<h2>Memory over the step</h2>",
        picture_html(result),
        "<h2>Summary</h2>",
        summary_table(result),
        verdict_html(result),
        category_table(result),
        phase_table(result),
        tensor_table(result),
        top_layers_table(result),
    ]
    if saved.layers:
        parts += ["<h2>Layers</h2>", layer_breakdown_table(saved.layers, saved.depth)]
    if saved.map_line and (saved.layers or saved.graph):
        parts.append(f'<p class="dim">{html.escape(saved.map_line)}</p>')
    if saved.diagnosis is not None:
        parts += ["<h2>Diagnosis</h2>", diagnosis_html(result, saved.diagnosis)]
    if saved.what_if is not None:
        parts += ["<h2>What if</h2>", what_if_html(result, saved.what_if)]
    title = html.escape(f"memtrace: {result.model.name}, peak {human_bytes(result.peak_bytes)}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def render(saved: Saved, out: IO[str] | Path) -> None:
    """The page, written to `out` (a path is written as UTF-8)."""
    page = html_report(saved)
    if isinstance(out, Path):
        out.write_text(page, encoding="utf-8")
    else:
        out.write(page)
