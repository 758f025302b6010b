"""Pictures of a Result: the step's memory timeline, and peak against a dimension for fit and sweep.

matplotlib is imported here only, lazily, with its Agg canvas (no display needed); figures are built with
`matplotlib.figure.Figure`, never pyplot, so nothing global changes. Sizes read in the report's units: the
left axis in GB (powers of ten), the right one in GiB.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..core.errors import MemtraceError
from ..core.records import Result, StepTimeline
from ..core.specs import human_bytes, short_bytes
from .palette import (
    BUDGET_STYLES,
    CATEGORY_COLOURS,
    CATEGORY_ORDER,
    PEAK_COLOUR,
    PHASE_COLOURS,
    RESERVED_COLOUR,
)
from .report import CATEGORY_LABELS

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.axes._secondary_axes import SecondaryAxis
    from matplotlib.figure import Figure

    from ..core.studies import FitResult, SweepRow
    from .saved import Saved

SUFFIXES = (".png", ".svg")
SIZE_INCHES = (12.0, 6.0)
DPI = 100
BUDGET_SHOWN_UP_TO = 2.5  # a budget above this many times the step's top is named, not drawn to scale
PEAK_GID = "peak"  # the peak marker's artist id (tests find it by this)
CHOSEN_GID = "chosen"
BUDGET_GID = "budget"  # budget lines: "budget0", "budget1", ... in --gpu order
VALUE_GID = "value"  # the sizes written at a sweep's points
BUDGET_SHOWN_DECADES = 2  # on a log axis, budgets up to 100x the data's top are drawn
LOG_MARGIN = 1.6  # a log axis reaches this factor below and above what it shows
CROWDED = 1 / 40  # swept values closer than this share of a linear axis's span: a log axis instead
HTML_DPI = 150  # the HTML report's picture: 1800x900 px shown at most 1200 px wide (sharp on HiDPI)
_UNITS = ((10**12, "TB", 2**40, "TiB"), (10**9, "GB", 2**30, "GiB"), (10**6, "MB", 2**20, "MiB"))


@dataclass(frozen=True)
class Unit:
    """The axis unit: values are divided by `size`; the right axis shows the same in `binary` units."""

    size: int
    name: str
    binary_size: int
    binary_name: str


def unit_for(largest: int) -> Unit:
    for size, name, bsize, bname in _UNITS:
        if largest >= size:
            return Unit(size, name, bsize, bname)
    return Unit(10**3, "kB", 2**10, "KiB")


def _figure() -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=SIZE_INCHES, dpi=DPI, layout="constrained")


def _binary_axis(ax: Axes, unit: Unit, log: bool = False) -> None:
    """The right axis: the left one's values in binary units (made after the left axis's scale is set,
    which it copies)."""
    ratio = unit.size / unit.binary_size

    def to_binary(v: Any) -> Any:
        return v * ratio

    def from_binary(v: Any) -> Any:
        return v / ratio

    right = ax.secondary_yaxis("right", functions=(to_binary, from_binary))
    right.set_ylabel(unit.binary_name)
    if log:
        low, high = ax.get_ylim()
        _round_log_ticks(right, low * ratio, high * ratio)


def timeline_figure(result: Result) -> Figure:
    """Memory over the steady-state step, stacked by category, phases as bands, the peak marked; the budget
    as a line with --gpu, reserved memory as a second line on cuda."""
    tl = result.timeline
    if tl is None:
        raise MemtraceError("this result has no timeline (saved by an older memtrace): trace the model again")
    data_top = max([result.peak.bytes, *tl.reserved])
    budget = result.verdict.budget_bytes if result.verdict else 0
    top = max(data_top, budget if budget <= BUDGET_SHOWN_UP_TO * data_top else 0)
    unit = unit_for(top)
    fig = _figure()
    ax = fig.add_subplot()
    cats = [c for c in CATEGORY_ORDER if c in tl.by_category]
    ax.stackplot(
        tl.index,
        *[[v / unit.size for v in tl.by_category[c]] for c in cats],
        colors=[CATEGORY_COLOURS[c] for c in cats],
        labels=[CATEGORY_LABELS.get(c, c.value) for c in cats],
        linewidth=0,
    )
    phases = _phase_bands(ax, tl)
    if tl.reserved:
        ax.plot(
            tl.index,
            [v / unit.size for v in tl.reserved],
            color=RESERVED_COLOUR,
            lw=1.5,
            label="reserved (max_memory_reserved)",
        )
    if result.verdict is not None:
        above = ", above the chart" if budget > top else ""
        label = f"budget on {result.verdict.gpu.name}: {human_bytes(budget)}{above}"
        colour, dash = BUDGET_STYLES[0]
        ax.axhline(budget / unit.size, color=colour, ls=dash, lw=1.2, label=label, gid=f"{BUDGET_GID}0")
    ax.set_xlim(0, max(tl.events - 1, 1))
    ax.set_ylim(0, top / unit.size * 1.2)
    _peak_marker(ax, result, tl, unit)
    ax.set_xlabel("event of the steady-state step (allocations and frees, in program order)")
    ax.set_ylabel(unit.name)
    _binary_axis(ax, unit)
    ax.set_title(_title(result), loc="left", fontsize=11)
    handles = ax.get_legend_handles_labels()[0] + phases
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.07, 1.0), fontsize=9, frameon=False)
    return fig


def _title(result: Result) -> str:
    inputs = ", ".join(i.text() for i in result.inputs)
    return (
        f"{result.model.name}: {result.mode} step on {result.device}, inputs {inputs}\n"
        f"peak {human_bytes(result.peak.bytes)} during {result.peak.phase.value}"
    )


def _phase_bands(ax: Axes, tl: StepTimeline) -> list[Artist]:
    """Each phase run as a light band; its name on top where the band is wide enough to hold it. Returns
    legend entries for the phases, where narrow bands get their name."""
    from matplotlib.patches import Patch

    seen = []
    for band in tl.bands:
        colour = PHASE_COLOURS[band.phase]
        ax.axvspan(band.start - 0.5, band.end - 0.5, color=colour, alpha=0.10, lw=0, zorder=0)
        if band.phase not in seen:
            seen.append(band.phase)
        if (band.end - band.start) >= 0.09 * tl.events:
            ax.text(
                (band.start + band.end) / 2,
                0.985,
                band.phase.value,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=9,
                color=colour,
            )
    return [Patch(color=PHASE_COLOURS[p], alpha=0.25, label=f"phase: {p.value}") for p in seen]


def _peak_marker(ax: Axes, result: Result, tl: StepTimeline, unit: Unit) -> None:
    if tl.peak_index < 0:
        return
    y = result.peak.bytes / unit.size
    ax.plot(
        [tl.peak_index], [y], marker="v", markersize=11, color=PEAK_COLOUR, ls="none", gid=PEAK_GID, zorder=5
    )
    where = result.peak.op or "-"
    if result.peak.module:
        where += f" in {result.peak.module}"
    right_half = tl.peak_index > 0.6 * tl.events
    low = y < 0.6 * ax.get_ylim()[1]  # room above the peak: the label goes there, else below it
    ax.annotate(
        f"peak {human_bytes(result.peak.bytes)}\n{where}",
        xy=(tl.peak_index, y),
        xytext=(-14 if right_half else 14, 24 if low else -8),
        textcoords="offset points",
        ha="right" if right_half else "left",
        va="bottom" if low else "top",
        fontsize=9,
        color=PEAK_COLOUR,
        bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": PEAK_COLOUR, "alpha": 0.9},
        arrowprops={"arrowstyle": "-", "color": PEAK_COLOUR},
        zorder=6,
    )


@dataclass(frozen=True)
class Series:
    """One line of a scaling figure: (x position, bytes) points, labelled; `dashed` for reserved memory."""

    label: str
    points: tuple[tuple[float, int], ...]
    dashed: bool = False
    colour: int = -1  # matplotlib's colour cycle index (C0, C1, ...); -1: the series' own position


def is_power_of_two(value: float) -> bool:
    return value >= 1 and value.is_integer() and int(value) & (int(value) - 1) == 0


def axis_scale(values: Sequence[float]) -> str:
    """How to space swept values: "log2" when they are all powers of two, "log" when a linear axis would
    crowd its closest two into less than CROWDED of its span, else "linear"."""
    distinct = sorted(set(values))
    if len(distinct) < 2:
        return "linear"
    if all(is_power_of_two(v) for v in distinct):
        return "log2"
    closest = min(b - a for a, b in itertools.pairwise(distinct))
    if distinct[0] > 0 and closest < CROWDED * (distinct[-1] - distinct[0]):
        return "log"
    return "linear"


def scaling_figure(
    series: Sequence[Series],
    xlabel: str,
    budgets: Sequence[tuple[str, int]],
    chosen: tuple[float, int] | None,
    title: str,
    ticks: Sequence[tuple[float, str]] = (),
    chosen_label: str = "chosen",
    xscale: str = "linear",
    value_labels: bool = False,
) -> Figure:
    """Peak against a dimension (batch, resolution, sequence), the budget lines, the chosen point marked.
    On a logarithmic x axis ("log2", "log") the y axis is logarithmic too, so growth as a power of the
    value is a straight line (slope 1: linear, 2: quadratic) where a linear y axis would bend it upward.
    Budgets far above the data (BUDGET_SHOWN_UP_TO, or BUDGET_SHOWN_DECADES on a log axis) are named in the
    legend, not drawn to scale; `value_labels` writes each solid line's peak at its points."""
    log = xscale in ("log", "log2")
    data = [b for s in series for _, b in s.points] + ([chosen[1]] if chosen else [])
    top = max(data, default=1)
    reach = top * (10**BUDGET_SHOWN_DECADES if log else BUDGET_SHOWN_UP_TO)
    drawn = [b for _, b in budgets if b <= reach]
    unit = unit_for(max([top, *drawn]))
    fig = _figure()
    ax = fig.add_subplot()
    for i, s in enumerate(series):
        _series_line(ax, s, i, unit)
    for j, (name, budget) in enumerate(budgets):
        _budget_line(ax, j, name, budget, unit, budget <= reach)
    if chosen is not None:
        ax.plot(
            [chosen[0]],
            [chosen[1] / unit.size],
            marker="*",
            ms=16,
            color=PEAK_COLOUR,
            ls="none",
            gid=CHOSEN_GID,
            zorder=5,
            label=f"{chosen_label}: {human_bytes(chosen[1])}",
        )
    shown = [*data, *drawn]
    if log:
        _log_axes(ax, unit, min(shown, default=1), max(shown, default=1))
    else:
        ax.set_ylim(0, max(shown, default=1) / unit.size * 1.12)
    _binary_axis(ax, unit, log)
    if ticks:
        ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks])
        ax.xaxis.set_minor_locator(_null_locator())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(unit.name + (" (log scale)" if log else ""))
    ax.set_title(title, loc="left", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.07, 1.0), fontsize=9, frameon=False)
    _readable_xticks(fig, ax)
    if value_labels:
        _value_labels(fig, ax, series, unit)
    return fig


def _series_line(ax: Axes, s: Series, i: int, unit: Unit) -> None:
    xs, ys = zip(*s.points, strict=True) if s.points else ((), ())
    ax.plot(
        xs,
        [y / unit.size for y in ys],
        marker="o",
        ms=4,
        ls="--" if s.dashed else "-",
        color=f"C{s.colour if s.colour >= 0 else i}",
        label=s.label,
    )


def _budget_line(ax: Axes, j: int, name: str, budget: int, unit: Unit, drawn: bool) -> None:
    """The j-th budget in its own colour and dash (palette.BUDGET_STYLES); one far above the chart only
    in the legend."""
    colour, dash = BUDGET_STYLES[j % len(BUDGET_STYLES)]
    label = f"budget on {name}: {human_bytes(budget)}" + ("" if drawn else ", above the chart")
    if drawn:
        ax.axhline(budget / unit.size, color=colour, ls=dash, lw=1.6, label=label, gid=f"{BUDGET_GID}{j}")
    else:
        ax.plot([], [], color=colour, ls=dash, lw=1.6, label=label, gid=f"{BUDGET_GID}{j}")


def _log_axes(ax: Axes, unit: Unit, low: int, high: int) -> None:
    """Both axes logarithmic (x in base 2, its ticks set by the caller), y from `low` to `high` bytes with
    a margin."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_ylim(low / unit.size / LOG_MARGIN, high / unit.size * LOG_MARGIN)
    _round_log_ticks(ax, *ax.get_ylim())


def _round_log_ticks(ax: Axes | SecondaryAxis, low: float, high: float) -> None:
    """A log y axis's ticks at round values (round_ticks) written plainly: 0.2, 5, 10, no powers of ten."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yticks(round_ticks(low, high))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(_null_locator())


def round_ticks(lo: float, hi: float) -> list[float]:
    """Round values between lo and hi for a log axis: the decades, else 1-2-5 steps, else every 1..9 in
    each decade, the first of these with at least four ticks."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks: list[float] = []
    for steps in ((1,), (1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [float(f"{m * 10.0**e:.12g}") for e in range(first, last + 1) for m in steps]
        ticks = [v for v in ticks if lo <= v <= hi]
        if len(ticks) >= 4:
            break
    return ticks


def _null_locator() -> Any:
    from matplotlib.ticker import NullLocator

    return NullLocator()


def _overlapping(boxes: Sequence[Any]) -> bool:
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def _readable_xticks(fig: Figure, ax: Axes) -> None:
    """Every tick keeps its label: where two would overlap, all are turned upright."""
    renderer = _laid_out(fig)
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    if _overlapping([t.get_window_extent(renderer) for t in labels]):
        for t in labels:
            t.set_rotation(90)


def _laid_out(fig: Figure) -> Any:
    """The figure laid out as it will be saved; its renderer, to measure text with."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    return canvas.get_renderer()


def _value_labels(fig: Figure, ax: Axes, series: Sequence[Series], unit: Unit) -> None:
    """Each solid line's size written below its points (a dashed reserved line runs above them), in its
    colour; a label that would overlap one already placed is left off (the table has every figure)."""
    renderer = _laid_out(fig)
    placed: list[Any] = []
    for i, s in enumerate(series):
        if s.dashed:
            continue
        colour = f"C{s.colour if s.colour >= 0 else i}"
        for x, b in s.points:
            text = ax.annotate(
                short_bytes(b),
                (x, b / unit.size),
                xytext=(0, -8),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=8,
                color=colour,
                gid=VALUE_GID,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
                annotation_clip=True,
            )
            text.set_in_layout(False)
            box = text.get_window_extent(renderer)
            if any(box.overlaps(other) for other in placed):
                text.remove()
            else:
                placed.append(box)


def fit_figure(fit: FitResult, gpu: str) -> Figure:
    """`fit`: the figure held against the budget at each probed value, the largest value that fits marked.
    Probes far above the budget (the search's first overshoots) are left off the chart's top."""
    points = tuple(sorted(fit.probes))
    chosen = (float(fit.max_value), fit.peak_bytes) if fit.max_value > 0 else None
    title = f"fit on {gpu}: the largest {fit.symbol} that fits is {fit.max_value or 'none'}"
    label = f"{'reserved' if fit.basis == 'reserved' else 'peak'} at each simulated {fit.symbol}"
    chosen_label = f"largest {fit.symbol} that fits"
    fig = scaling_figure(
        [Series(label, points)], fit.symbol, [(gpu, fit.budget_bytes)], chosen, title, (), chosen_label
    )
    ax = fig.axes[0]
    top = 2.5 * max(fit.budget_bytes, chosen[1] if chosen else 0)
    if max((b for _, b in points), default=0) > top:
        unit = unit_for(max(b for _, b in points))
        ax.set_ylim(0, top / unit.size)
        ax.set_title(title + f" ({sum(b > top for _, b in points)} probe(s) above the chart)", loc="left")
    values = [v for v, _ in points]
    if values and max(values) > 32 * max(min(values), 1):
        ax.set_xscale("log", base=2)
    return fig


def sweep_figure(
    rows: Sequence[SweepRow], axes: Sequence[Sequence[dict[str, int]]], budgets: Sequence[tuple[str, int]]
) -> Figure:
    """`sweep`: the peak (and reserved, on cuda) against the longest --set axis, a line per combination of
    the others; the largest combination that fits the first GPU marked. The axis is spaced as its values
    are (their product for HxW), logarithmically for powers of two (axis_scale); each value is a tick."""
    along = max(range(len(axes)), key=lambda i: len(axes[i]))
    keys = list(axes[along][0])
    labels = ["x".join(str(b[k]) for k in keys) for b in axes[along]]
    positions = [float(math.prod(b[k] for k in keys)) for b in axes[along]]
    groups: dict[str, list[tuple[float, SweepRow]]] = {}
    for row in rows:
        if row.error:
            continue
        x = positions[labels.index("x".join(str(row.values[k]) for k in keys))]
        rest = ", ".join(f"{k}={v}" for k, v in row.values.items() if k not in keys)
        groups.setdefault(rest, []).append((x, row))
    series = _sweep_series(groups)
    chosen = None
    if budgets:
        fitting = [(x, r) for pts in groups.values() for x, r in pts if r.fits.get(budgets[0][0])]
        if fitting:
            at, best = max(fitting, key=lambda p: (p[1].peak_bytes, p[0]))
            chosen = (at, best.reserved_bytes or best.peak_bytes)
    name = "x".join(keys)
    scale = axis_scale(positions)
    title = f"sweep: peak against {name}"
    label = f"largest that fits {budgets[0][0]}" if budgets else ""
    xlabel = name + (f" (spaced by {'*'.join(keys)})" if len(keys) > 1 else "")
    xlabel += {"log2": ", log2 scale", "log": ", log scale"}.get(scale, "")
    ticks = list(zip(positions, labels, strict=True))
    return scaling_figure(series, xlabel, budgets, chosen, title, ticks, label, scale, value_labels=True)


def _sweep_series(groups: dict[str, list[tuple[float, SweepRow]]]) -> list[Series]:
    """A peak line per combination of the other --set values, and its reserved line (dashed, same colour)
    where reserved memory was simulated; with a generation, the KV cache at the peak (its own colour)."""
    series: list[Series] = []
    for g, (rest, pts) in enumerate(groups.items()):
        name = f" ({rest})" if rest else ""
        series.append(Series(f"peak{name}", tuple((x, r.peak_bytes) for x, r in pts), colour=g))
        if any(r.reserved_bytes for _, r in pts):
            reserved = tuple((x, r.reserved_bytes) for x, r in pts)
            series.append(Series(f"reserved{name}", reserved, dashed=True, colour=g))
    for g, (rest, pts) in enumerate(groups.items()):  # generation: the KV cache at the peak, a line beside
        if any(r.kv_cache_bytes for _, r in pts):
            name = f" ({rest})" if rest else ""
            kv = tuple((x, r.kv_cache_bytes) for x, r in pts)
            series.append(Series(f"kv cache at the peak{name}", kv, colour=len(groups) + g))
    return series


def check_suffix(path: Path, what: str = "--plot") -> None:
    if path.suffix.lower() not in SUFFIXES:
        raise MemtraceError(f"{what} {path}: the suffix must be .png or .svg")


def save(fig: Figure, path: Path) -> None:
    """Write the figure as PNG or SVG (by suffix) at the figure's size and DPI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    check_suffix(path)
    FigureCanvasAgg(fig)
    fig.savefig(path, format=path.suffix.lower().lstrip("."), dpi=DPI)


def render(saved: Saved, out: Path | IO[bytes]) -> None:
    """The timeline of the step: PNG or SVG by a path's suffix; PNG into a binary file."""
    fig = timeline_figure(saved.result)
    if isinstance(out, Path):
        save(fig, out)
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(out, format="png", dpi=DPI)


def png_base64(fig: Figure, dpi: int = HTML_DPI) -> str:
    """The figure as base64 PNG text for a `data:` URI, at `dpi`, in 256 colours (flat areas and
    antialiased text: a third of the bytes of full colour, no visible change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    FigureCanvasAgg(fig)
    raw = io.BytesIO()
    fig.savefig(raw, format="png", dpi=dpi)
    raw.seek(0)
    image = Image.open(raw).convert("RGB").quantize(colors=256)
    out = io.BytesIO()
    image.save(out, format="png", optimize=True)
    return base64.b64encode(out.getvalue()).decode("ascii")
