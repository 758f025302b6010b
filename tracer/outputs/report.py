"""Render a Result for people: the terminal report (`render`). Pure: no torch import."""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, TYPE_CHECKING

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ..analysis.layers import totals
from ..core.records import (
    BORDERLINE,
    CUDNN_WORKSPACE,
    FITS,
    LOGGED,
    Category,
    CudaFigures,
    LayerRow,
    Result,
    Verdict,
    stated_uncertainty,
)
from ..core.specs import human_bytes, short_bytes
from .palette import CATEGORY_COLOURS

if TYPE_CHECKING:
    from ..core.studies import Diagnosis, WhatIfRow
    from .saved import Saved

CATEGORY_LABELS: dict[Category, str] = {
    Category.PARAMETER: "parameters",
    Category.BUFFER: "buffers",
    Category.GRADIENT: "gradients",
    Category.OPTIMIZER_STATE: "optimizer state",
    Category.ACTIVATION: "saved activations",
    Category.TEMPORARY: "temporaries",
    Category.INPUT: "inputs",
    Category.OUTPUT: "outputs",
    Category.WORKSPACE: "library workspaces",
    Category.COMMUNICATION: "communication buffers",
    Category.KV_CACHE: "KV cache",
}
_ORDER = list(CATEGORY_LABELS)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def header(result: Result) -> Text:
    m = result.model
    text = Text()
    text.append("memtrace", style="bold")
    text.append(f"  {m.name}: {m.parameters:,} parameters ({human_bytes(m.parameter_bytes)})")
    if m.trainable_parameters != m.parameters:
        text.append(f", {m.trainable_parameters:,} trainable")
    text.append(f"\n  {result.mode} step on {result.device}")
    if result.mode == "train":
        text.append(f", optimizer {result.optimizer}")
    text.append("; inputs " + ", ".join(i.text() for i in result.inputs))
    text.append(f"\n  step: {step_text(result)}")
    if result.parallel:
        text.append(f"\n  data parallel: {result.parallel}; the figures are this rank's")
    if result.recipe != "fp32":
        text.append(f"\n  recipe: {result.recipe}")
    if result.accumulate > 1 and result.effective_batch:
        text.append(f"; effective batch {result.effective_batch} ({result.accumulate} micro-batches)")
    if result.flops:
        text.append(f"\n  {result.flops / 1e9:,.1f} GFLOP per step ({flops_scope(result)})")
    for note in result.notes:
        text.append(f"\n  note: {note}", style="yellow")
    text.append(assumption_lines(result))
    return text


_SHOWN_CHOICES = 16  # lines: a detector replaying measured counts makes dozens of choices


def assumption_lines(result: Result) -> Text:
    """The data-dependent values the simulation chose, one line per choice (its modules counted)."""
    text = Text()
    modules: dict[tuple[str, str, str], list[str]] = {}
    logged: dict[tuple[str, str], None] = {}
    for a in result.assumptions:
        if a.source == LOGGED:  # a value the step logs: its line, not a choice of the policy
            logged.setdefault((a.op.removesuffix(" (logged)"), a.module), None)
            continue
        modules.setdefault((a.op, a.value, a.source), []).append(a.module)
    for op, where in logged:
        text.append(
            f"\n  logged: {op} at {where} read as 0.0 (a logged value changes no memory)", style="yellow"
        )
    for (op, value, source), names in list(modules.items())[:_SHOWN_CHOICES]:
        where = names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more"
        text.append(f"\n  assumed: {op} in {where}: {value} ({source})", style="yellow")
    if len(modules) > _SHOWN_CHOICES:
        more = len(modules) - _SHOWN_CHOICES
        text.append(f"\n  assumed: {more} more choices (all of them in --json's assumptions)", style="yellow")
    if modules:
        text.append("\n  (data-dependent values; change them with --assume KEY=VALUE)", style="yellow")
    return text


def flops_scope(result: Result) -> str:
    """What the step's FLOPs count, by what the step runs."""
    if result.mode == "generate":
        return (
            "the prefill and every decode step"
            if result.step.startswith("generate()")
            else "all your step runs"
        )
    if result.step != "default":
        return "all your step runs"
    if result.mode != "train":
        return "forward only, no loss"
    return "forward, loss, backward and any recompute"


def step_text(result: Result) -> str:
    """Which program was simulated, in the words the README uses."""
    if result.mode == "generate" and result.step.startswith("generate()"):
        return f"Hugging Face {result.step}, eval mode, under its own no_grad (an upper bound: see the note)"
    if result.step != "default" and result.mode == "generate":
        return f"your {result.step}, your own generation loop, the model in eval mode, no backward"
    if result.step != "default" and result.mode != "train":
        return f"your {result.step}, the model in eval mode, no optimizer (whatever your step runs)"
    if result.step != "default":
        return f"your {result.step} (its own loss, autocast and accumulation)"
    if result.mode == "infer":
        return "forward under torch.inference_mode(), eval mode"
    if result.mode == "no_grad":
        return "forward under torch.no_grad(), eval mode"
    held = "output freed before backward" if result.free_output else "output held through backward"
    return f"default training step, loss {result.loss}, {held}"


def peak_line(result: Result) -> Text:
    p = result.peak
    where = f"{p.phase.value}, op {p.op or '-'}" + (f" in {p.module}" if p.module else "")
    text = Text()
    text.append(f"\nPeak allocated: {p.bytes:,} bytes = {human_bytes(p.bytes)}", style="bold")
    text.append(f"\n  during {where} (steady-state iteration)")
    if result.first_iteration_peak > p.bytes:
        text.append(f"\n  the first iteration peaks higher: {human_bytes(result.first_iteration_peak)}")
    if result.cuda is not None:
        text.append(cuda_lines(result.cuda))
    return text


def cuda_lines(c: CudaFigures) -> Text:
    """The caching allocator's figures, named as torch.cuda reports them."""
    text = Text()
    arch = f"sm{c.compute_capability.replace('.', '')}"
    assumed = " (assumed: an A100; --gpu PRESET names the GPU)" if c.compute_capability_assumed else ""
    text.append(f"\n  for {arch}{assumed}", style="dim")
    text.append(f"\n  allocated {human_bytes(c.allocated_peak_bytes)}  (torch.cuda.max_memory_allocated)")
    text.append(f"\n  requested {human_bytes(c.requested_peak_bytes)}  (the sizes asked for)")
    text.append(f"\n  reserved  {human_bytes(c.reserved_peak_bytes)}  (torch.cuda.max_memory_reserved)")
    text.append(
        f", of which {human_bytes(c.fragmentation_bytes)} cached but unused at the reserved peak", style="dim"
    )
    if c.managed_bytes:
        text.append(
            f"\n  managed   {human_bytes(c.managed_bytes)}  (paged optimizer state in CUDA unified memory: "
            "not in allocated or reserved)"
        )
    if c.host_bytes:
        text.append(
            f"\n  host      {human_bytes(c.host_bytes)}  (the offloaded KV cache's layers in pinned host "
            "memory at their peak: not in allocated or reserved)"
        )
    paged = " + the paged state while on the GPU" if c.managed_bytes else ""
    text.append(
        f"\n  nvidia-smi ~ {human_bytes(c.nvidia_smi_estimate_bytes)}  (reserved + a "
        f"{human_bytes(c.context_bytes_estimate)} CUDA context estimate{paged})",
        style="dim",
    )
    if c.cudnn_workspace_estimate is not None:
        low, high = c.cudnn_workspace_estimate["low_bytes"], c.cudnn_workspace_estimate["high_bytes"]
        text.append(
            f"\n  cuDNN conv workspace not in the peak: +{human_bytes(low)}..+{human_bytes(high)} "
            "(estimate: one call's, chosen by cuDNN's heuristics)",
            style="yellow",
        )
    for r in c.ranges:
        text.append(f"\n  {r.what}: a range, up to +{human_bytes(r.extra_bytes)} ({r.cause})", style="yellow")
    return text


def category_table(result: Result) -> Table:
    table = Table(title="Live at the peak, by category", title_justify="left", show_edge=False)
    table.add_column("category")
    table.add_column("bytes", justify="right")
    table.add_column("size", justify="right")
    table.add_column("share", justify="right")
    table.add_column("allocated in the step", justify="right")
    by_cat = result.peak.by_category
    for cat in _ORDER:
        if by_cat.get(cat, 0) or result.totals.get(cat, 0):
            table.add_row(
                Text(CATEGORY_LABELS[cat], style=CATEGORY_COLOURS[cat]),
                f"{by_cat.get(cat, 0):,}",
                short_bytes(by_cat.get(cat, 0)),
                _pct(by_cat.get(cat, 0), result.peak.bytes),
                short_bytes(result.totals.get(cat, 0)),
            )
    table.add_row("total", f"{result.peak.bytes:,}", short_bytes(result.peak.bytes), "100%", "", style="bold")
    return table


def phase_table(result: Result) -> Table:
    table = Table(title="Peak per phase", title_justify="left", show_edge=False)
    for col in ("phase", "peak", "at op", "in module"):
        table.add_column(col, justify="right" if col == "peak" else "left")
    for row in result.phases:
        table.add_row(row.phase.value, short_bytes(row.bytes), row.op or "(frees only)", row.module or "-")
    return table


def tensor_table(result: Result) -> Table:
    table = Table(title="Largest tensors at the peak", title_justify="left", show_edge=False)
    for col in ("size", "category", "shape", "dtype", "made by", "layer"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for t in result.peak.top_tensors:
        table.add_row(
            short_bytes(t.nbytes),
            Text(CATEGORY_LABELS[t.category], style=CATEGORY_COLOURS[t.category]),
            "x".join(map(str, t.shape)) or "scalar",
            t.dtype,
            t.op or "-",
            t.module or "-",
        )
    return table


def top_layers_table(result: Result) -> Table:
    """The summary's table of the layers holding the most at the peak (`Result.top_layers`)."""
    table = Table(title="Layers holding the most at the peak", title_justify="left", show_edge=False)
    for col in ("layer", "type", "bytes", "share", "of which"):
        table.add_column(col, justify="right" if col in ("bytes", "share") else "left")
    for layer in result.top_layers:
        parts = [f"{CATEGORY_LABELS[c]} {short_bytes(b)}" for c, b in layer.by_category.items() if b]
        table.add_row(
            layer.module or "(model)",
            layer.type,
            short_bytes(layer.bytes),
            _pct(layer.bytes, result.peak.bytes),
            ", ".join(parts),
        )
    return table


def dominant_line(result: Result) -> Text:
    text = Text()
    if not result.top_layers:
        return text
    # the most specific holder: the root's own row holds what runs outside its children (workspaces, glue)
    top = next((layer for layer in result.top_layers if layer.module), result.top_layers[0])
    text.append("\nDominant: ", style="bold")
    text.append(
        f"{top.module or '(model)'} ({top.type}) holds {human_bytes(top.bytes)}, "
        f"{_pct(top.bytes, result.peak.bytes)} of the peak"
    )
    return text


def _taking_bounds(v: Verdict) -> str:
    """`cuDNN's convolution workspace takes its bound`: what the worst case assumes."""
    if len(v.uncertain_reasons) == 1:
        return f"{v.uncertain_reasons[0]} takes its bound"
    return f"{', '.join(v.uncertain_reasons)} take their bounds"


_UNCERTAIN_WHY = {CUDNN_WORKSPACE: "chosen by cuDNN's heuristics when the step runs (not simulated)"}


def _uncertain_line(result: Result, v: Verdict) -> Text:
    """Each range the verdict weighed and its cause; with several, each one's upper end above the figure."""
    why = {**_UNCERTAIN_WHY, **{r.what: r.cause for r in (result.cuda.ranges if result.cuda else ())}}
    extra = dict(stated_uncertainty(result.cuda))
    several = len(v.uncertain_reasons) > 1
    parts = [f"{r}, {why.get(r, 'not simulated')}" for r in v.uncertain_reasons]
    if several:
        parts = [
            p + (f" (up to {human_bytes(extra[r])})" if r in extra else "")
            for p, r in zip(parts, v.uncertain_reasons, strict=True)
        ]
    return Text(f"\n  uncertain: {'; '.join(parts)}: up to {human_bytes(v.uncertain_bytes)}", style="yellow")


def verdict_line(result: Result) -> Text:
    """Fits (even at every stated uncertainty's bound), borderline (by the simulation only), or does not."""
    text = Text()
    v = result.verdict
    if v is None:
        return text
    gpu = f"{v.gpu.name} ({human_bytes(v.gpu.bytes)})"
    if v.status == FITS:
        text.append(f"\nFits on {gpu}: ", style="bold green")
        text.append(f"{human_bytes(v.spare_bytes)} to spare")
        if v.uncertain_reasons:
            left = human_bytes(-v.worst_short_bytes)
            text.append(f"\n  still {left} to spare if {_taking_bounds(v)}", style="dim")
    elif v.status == BORDERLINE:
        text.append(f"\nBorderline on {gpu}: ", style="bold yellow")
        text.append(f"{human_bytes(v.spare_bytes)} to spare by the simulation,")
        text.append(f"\n  up to {human_bytes(v.worst_short_bytes)} short if {_taking_bounds(v)}")
        text.append(_uncertain_line(result, v))
    else:
        text.append(f"\nDoes not fit on {gpu}: ", style="bold red")
        text.append(f"needs {human_bytes(-v.spare_bytes)} more")
    kept = v.gpu.bytes - v.budget_bytes
    text.append(
        f"\n  budget {human_bytes(v.budget_bytes)} = GPU memory - {human_bytes(kept)} kept free", style="dim"
    )
    if v.basis == "reserved":
        text.append(" (CUDA context); reserved memory is held against it", style="dim")
    elif result.device == "cuda":
        text.append(" (CUDA context and fragmentation)", style="dim")
    return text


def summary(result: Result) -> Group:
    return Group(
        header(result),
        peak_line(result),
        Text(),
        category_table(result),
        Text(),
        phase_table(result),
        Text(),
        tensor_table(result),
        Text(),
        top_layers_table(result),
        dominant_line(result),
        verdict_line(result),
    )


def render(saved: Saved, out: Console | IO[str], *, layers: bool = False) -> None:
    """The terminal report of `memtrace trace` (and `show`), from the records alone: the summary, the map
    line, the layer table (`layers`), the diagnosis and the what-if table. `out`: a console, or a text file
    (printed 160 columns wide)."""
    console = out if isinstance(out, Console) else Console(file=out, width=160)
    result = saved.result
    console.print(summary(result))
    if saved.graph and saved.map_line:
        console.print(saved.map_line, style="dim")
    if layers:
        if not saved.graph and saved.map_line:
            console.print(saved.map_line, style="dim")
        console.print(Text())
        console.print(layer_breakdown_table(saved.layers, totals(saved.layers), saved.depth))
    if saved.diagnosis is not None:
        console.print(diagnosis_view(result, saved.diagnosis))
    if saved.what_if is not None:
        console.print(what_if_table(result, saved.what_if))


def report_console() -> Console:
    """The console `trace` and `show` print to: the terminal's, else 160 columns (pipes, tests)."""
    return Console() if Console().is_terminal else Console(width=160)


def what_if_table(result: Result, rows: Sequence[WhatIfRow]) -> Table:
    """One row per single change, each from its own simulation."""
    table = Table(title="What if (each row simulated)", title_justify="left", show_edge=False)
    for col in ("change", "peak", "saved", "saved %", "FLOPs x", "flags"):
        table.add_column(col, justify="left" if col in ("change", "flags") else "right")
    table.add_row("current: " + result.recipe, short_bytes(result.peak_bytes), "-", "-", "1.00", "")
    for row in rows:
        if row.error:
            status = "skipped" if row.error.startswith("skipped") else "failed"
            table.add_row(row.change, status, "", "", "", row.error.removeprefix("skipped: ")[:60])
            continue
        table.add_row(
            row.change,
            short_bytes(row.peak_bytes),
            short_bytes(row.saved_bytes),
            f"{100 * row.saved_fraction:.1f}%",
            f"{row.flops_ratio:.2f}",
            row.flags,
        )
    return table


def layer_cells(r: LayerRow, name: str) -> list[str]:
    """A row of the per-layer table (`--layers`), as the terminal and the HTML page show it."""
    return [
        name,
        r.type,
        _shape(r.output_shape),
        f"{r.parameters:,}",
        short_bytes(r.parameter_bytes),
        short_bytes(r.gradient_bytes + r.optimizer_bytes),
        short_bytes(r.activation_bytes),
        short_bytes(r.peak_bytes),
        _flops(r.flops),
    ]


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if shape else "-"


def _flops(n: int) -> str:
    for unit, size in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def layer_breakdown_table(rows: Sequence[LayerRow], total: LayerRow, depth: int) -> Table:
    """The per-layer table (--layers); its totals line equals the summary's figures."""
    table = Table(title=f"Layers (depth {depth})", title_justify="left", show_edge=False, show_footer=True)
    cols = (
        "layer",
        "type",
        "output",
        "params",
        "param bytes",
        "grad + optim",
        "saved acts",
        "at peak",
        "FLOPs",
    )
    foot = (
        "total",
        "",
        "",
        f"{total.parameters:,}",
        short_bytes(total.parameter_bytes),
        short_bytes(total.gradient_bytes + total.optimizer_bytes),
        short_bytes(total.activation_bytes),
        short_bytes(total.peak_bytes),
        _flops(total.flops),
    )
    widest = max((len(r.name) + 2 * max(r.depth - 1, 0) for r in rows), default=5)
    for col, f in zip(cols, foot, strict=True):
        if col == "layer":
            table.add_column(col, footer=f, no_wrap=True, min_width=widest)
        elif col == "type":
            table.add_column(col, footer=f, no_wrap=True, overflow="ellipsis", max_width=44)
        else:
            table.add_column(col, footer=f, justify="left" if col == "output" else "right", no_wrap=True)
    for r in rows:
        table.add_row(*layer_cells(r, "  " * max(r.depth - 1, 0) + r.name))
    return table


def diagnosis_view(result: Result, diag: Diagnosis) -> Group:
    """What dominates the peak and what each common fix would do, each fix simulated."""
    text = Text()
    text.append("\nDiagnosis\n", style="bold")
    dom = diag.dominant
    if dom is not None:
        parts = ", ".join(f"{CATEGORY_LABELS[c]} {short_bytes(b)}" for c, b in dom.by_category.items() if b)
        text.append(
            f"  {dom.module or '(model)'} ({dom.type}) dominates: {short_bytes(dom.bytes)}, "
            f"{_pct(dom.bytes, result.peak_bytes)} of the peak ({parts})\n"
        )
    for h in diag.flatten_heads:
        c, hh, w = h.feature_map
        text.append(
            f"  {h.linear} is fed by {h.flatten} of a {c}x{hh}x{w} feature map: {h.in_features:,} inputs "
            f"x {h.out_features} outputs = {short_bytes(h.parameter_bytes)} of weights; a global-average-"
            f"pooling head ({c} inputs) would hold {short_bytes(h.gap_parameter_bytes)}\n"
        )
    table = Table(title="What would help (each re-simulated)", title_justify="left", show_edge=False)
    for col in ("change", "new peak", "saved", "saved %", "how"):
        table.add_column(col, justify="left" if col in ("change", "how") else "right")
    for f in diag.fixes:
        if f.error:
            table.add_row(f.change, "failed", "", "", f.error[:60])
        else:
            table.add_row(
                f.change,
                short_bytes(f.peak_bytes),
                short_bytes(f.saved_bytes),
                f"{100 * f.saved_fraction:.1f}%",
                f.flags,
            )
    return Group(text, table)
