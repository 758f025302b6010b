"""The timeline (pure, on hand-written event streams), its hold on the CPU allocator, and the pictures:
file, size, not blank, the peak marker at the peak's event (in the figure object and in the PNG's pixels)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from accuracy import compare_config
from PIL import Image
from reference import measure
from zoo import ZOO, make_inputs

from memtrace.tracer.analysis.timeline import MAX_POINTS, compact, step_timeline
from memtrace.tracer.core.records import (
    Category,
    Event,
    GpuSpec,
    Kind,
    Phase,
    Result,
    StepTimeline,
    StorageInfo,
    Trace,
    Verdict,
)
from memtrace.tracer.core.specs import OptimizerSpec, short_bytes
from memtrace.tracer.outputs.palette import BUDGET_STYLES, PEAK_COLOUR
from memtrace.tracer.outputs.plots import (
    BUDGET_GID,
    CHOSEN_GID,
    DPI,
    PEAK_GID,
    SIZE_INCHES,
    VALUE_GID,
    Series,
    axis_scale,
    save,
    scaling_figure,
    sweep_figure,
    timeline_figure,
    unit_for,
)
from memtrace.tracer.simulate import Config
from memtrace.tracer.studies.fit import SweepRow

A, F = Kind.ALLOC, Kind.FREE
SGD = Config("train", OptimizerSpec("sgd", (("momentum", 0.9),)), "cpu")


def _trace(
    events: list[tuple[Kind, int, int, Phase, int]], cats: dict[int, Category], base: tuple[int, ...]
) -> Trace:
    """Events (kind, storage, nbytes, phase, iteration); storage sizes from their first event."""
    sizes = {sid: n for _, sid, n, _, _ in reversed(events)} | {sid: 100 for sid in base}
    storages = {
        sid: StorageInfo(sid, sizes[sid], cats[sid], "op", "m", (sizes[sid],), "uint8", Phase.FORWARD, 0)
        for sid in sizes
    }
    evs = tuple(Event(i, k, s, n, p, it, f"op{i}", "m") for i, (k, s, n, p, it) in enumerate(events))
    return Trace(evs, storages, base, 2)


def test_timeline_of_a_hand_written_step() -> None:
    cats = {0: Category.PARAMETER, 1: Category.ACTIVATION, 2: Category.TEMPORARY, 3: Category.GRADIENT}
    fw, bw, op = Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER
    events = [
        (A, 1, 10, fw, 0),
        (F, 1, 10, bw, 0),  # the first step: not in the timeline
        (A, 1, 10, fw, 1),
        (A, 2, 5, fw, 1),
        (F, 2, 5, fw, 1),
        (A, 3, 100, bw, 1),
        (F, 1, 10, bw, 1),
        (A, 2, 7, op, 1),
        (F, 2, 7, op, 1),
    ]
    trace = _trace(events, cats, (0,))
    tl = step_timeline(trace, 1, peak_seq=5)
    assert tl is not None
    assert tl.events == 7 and tl.index == tuple(range(7))
    assert tl.by_category[Category.PARAMETER] == (100,) * 7
    assert tl.by_category[Category.ACTIVATION] == (10, 10, 10, 10, 0, 0, 0)
    assert tl.by_category[Category.TEMPORARY] == (0, 5, 0, 0, 0, 7, 0)
    assert tl.by_category[Category.GRADIENT] == (0, 0, 0, 100, 100, 100, 100)
    assert Category.OUTPUT not in tl.by_category  # never live: left out
    assert tl.totals() == [110, 115, 110, 210, 200, 207, 200]
    assert tl.peak_index == 3
    assert [(b.phase, b.start, b.end) for b in tl.bands] == [(fw, 0, 3), (bw, 3, 5), (op, 5, 7)]
    assert StepTimeline.from_json(json.loads(json.dumps(tl.to_json()))) == tl


def test_compaction_keeps_the_envelope_the_peak_and_the_phase_edges() -> None:
    totals = [(i * 7919) % 1000 for i in range(100_000)]
    totals[54_321] = 5000
    kept = compact(totals, {0, 99_999, 54_321}, max_points=1000)
    assert len(kept) <= 1003
    assert {0, 99_999, 54_321} <= set(kept)
    assert max(totals[i] for i in kept) == 5000
    assert min(totals[i] for i in kept) == min(totals)
    assert compact(totals[:500], set(), max_points=1000) == list(range(500))


def test_a_long_step_stays_small_in_json() -> None:
    """200,000 events (a large model's step has tens of thousands): the JSON holds at most MAX_POINTS
    points plus the phase edges, whatever the length, so a 70B step's result stays far under 20 MB."""
    n = 200_000
    cats = {1: Category.ACTIVATION, 2: Category.TEMPORARY}
    events = []
    for i in range(n // 2):
        phase = Phase.FORWARD if i < n // 4 else Phase.BACKWARD
        events += [(A, 1 + i % 2, 1000 + i % 977, phase, 1), (F, 1 + i % 2, 1000 + i % 977, phase, 1)]
    trace = _trace(events, {**cats}, ())
    peak_seq = max(range(n), key=lambda i: events[i][2] if events[i][0] is A else -1)
    tl = step_timeline(trace, 1, peak_seq)
    assert tl is not None and tl.events == n
    assert len(tl.index) <= MAX_POINTS + 4
    assert max(tl.totals()) == max(ev[2] for ev in events)
    assert tl.peak_index == peak_seq
    assert len(json.dumps(tl.to_json())) < 1_000_000


@pytest.mark.parametrize("name", ["mlp", "seed_cnn"])
def test_timeline_holds_against_the_cpu_allocator(name: str) -> None:
    """Its highest point is the allocator's peak and its last point what the step leaves live."""
    case = next(c for c in ZOO if c.name == name)
    measured = measure(case.build(), make_inputs(case), config=SGD)
    live = measured.start + sum(size for size, _ in measured.allocations)
    tl = compare_config(case, SGD).result.timeline
    assert tl is not None
    totals = tl.totals()
    assert max(totals) == measured.peak
    assert totals[tl.index.index(tl.peak_index)] == measured.peak
    assert totals[-1] == live


@pytest.fixture(scope="module")
def mlp_result() -> Result:
    case = next(c for c in ZOO if c.name == "mlp")
    result = compare_config(case, SGD).result
    verdict = Verdict(GpuSpec("tiny", 100_000_000), True, 90_000_000, 90_000_000 - result.peak_bytes)
    return Result(**{**vars(result), "verdict": verdict})


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _near(pixels: np.ndarray, x: float, y: float, colour: str, radius: int = 3) -> bool:
    """Whether a pixel within `radius` of display point (x, y) has `colour` (PNG rows run top down)."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    row, col = round(pixels.shape[0] - y), round(x)
    patch = pixels[max(row - radius, 0) : row + radius + 1, max(col - radius, 0) : col + radius + 1]
    return bool((np.abs(patch - rgb).sum(axis=2) < 30).any())


def _not_blank(pixels: np.ndarray) -> None:
    assert pixels.std() > 20
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


def test_timeline_png_marks_the_peak_at_its_event(mlp_result: Result, tmp_path: Path) -> None:
    tl = mlp_result.timeline
    assert tl is not None
    fig = timeline_figure(mlp_result)
    ax = fig.axes[0]
    (marker,) = [line for line in ax.get_lines() if line.get_gid() == PEAK_GID]
    unit = unit_for(mlp_result.verdict.budget_bytes if mlp_result.verdict else 0)
    assert list(marker.get_xdata()) == [tl.peak_index]
    assert list(marker.get_ydata()) == [mlp_result.peak_bytes / unit.size]
    assert tl.totals()[tl.index.index(tl.peak_index)] == mlp_result.peak_bytes
    budget = [line for line in ax.get_lines() if "budget" in str(line.get_label())]
    assert budget and budget[0].get_ydata()[0] == 90_000_000 / unit.size
    path = tmp_path / "timeline.png"
    save(fig, path)
    pixels = _pixels(path)
    assert pixels.shape == (SIZE_INCHES[1] * DPI, SIZE_INCHES[0] * DPI, 3)
    _not_blank(pixels)
    x, y = ax.transData.transform((tl.peak_index, mlp_result.peak_bytes / unit.size))
    assert _near(pixels, x, y, PEAK_COLOUR)
    x_other, _ = ax.transData.transform((0, 0))
    assert not _near(pixels, x_other + 2, y, PEAK_COLOUR)  # the marker, not a red wash everywhere


def test_timeline_svg(mlp_result: Result, tmp_path: Path) -> None:
    path = tmp_path / "timeline.svg"
    save(timeline_figure(mlp_result), path)
    text = path.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and 'id="peak' in text
    assert 'width="864pt" height="432pt"' in text  # 12 x 6 inches


def test_scaling_figure_marks_the_chosen_point(tmp_path: Path) -> None:
    series = [Series("peak", ((1.0, 2 * 10**9), (2.0, 4 * 10**9), (4.0, 8 * 10**9), (8.0, 16 * 10**9)))]
    fig = scaling_figure(series, "B", [("gpu", 10 * 10**9)], (4.0, 8 * 10**9), "fit")
    ax = fig.axes[0]
    (chosen,) = [line for line in ax.get_lines() if line.get_gid() == CHOSEN_GID]
    assert list(chosen.get_xdata()) == [4.0] and list(chosen.get_ydata()) == [8.0]
    path = tmp_path / "fit.png"
    save(fig, path)
    pixels = _pixels(path)
    _not_blank(pixels)
    assert _near(pixels, *ax.transData.transform((4.0, 8.0)), PEAK_COLOUR)


def test_sweep_figure_marks_the_largest_that_fits(tmp_path: Path) -> None:
    axes = [[{"B": 1}, {"B": 2}], [{"H": 100, "W": 200}, {"H": 200, "W": 400}, {"H": 400, "W": 800}]]
    rows = []
    for b in (1, 2):
        for i, hw in enumerate(axes[1]):
            peak = b * 10**9 * 4**i
            rows.append(SweepRow({"B": b, **hw}, 0, 0, 0, peak, {"gpu": peak <= 5 * 10**9}, "", peak + 10**8))
    fig = sweep_figure(rows, axes, [("gpu", 5 * 10**9)])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100x200", "200x400", "400x800"]
    lines = {str(line.get_label()): line for line in ax.get_lines()}
    assert list(lines["peak (B=2)"].get_ydata()) == [2.0, 8.0, 32.0]
    assert lines["peak (B=2)"].get_color() == lines["reserved (B=2)"].get_color()
    (chosen,) = [line for line in ax.get_lines() if line.get_gid() == CHOSEN_GID]
    assert list(chosen.get_xdata()) == [200 * 400]  # 200x400 at B=1: 4 GB, the largest that fits
    assert list(chosen.get_ydata()) == [4.1]  # its reserved memory, what the verdict holds
    save(fig, tmp_path / "sweep.png")
    _not_blank(_pixels(tmp_path / "sweep.png"))


def test_fit_figure_marks_the_value_found() -> None:
    from memtrace.tracer.outputs.plots import fit_figure
    from memtrace.tracer.studies.fit import FitResult

    probes = ((1, 10**9), (8, 3 * 10**9), (12, 4 * 10**9), (13, 5 * 10**9 + 1), (1024, 400 * 10**9))
    fit = FitResult("B", 12, 4 * 10**9, 5 * 10**9 + 1, 5 * 10**9, 5, probes, basis="reserved")
    ax = fit_figure(fit, "gpu").axes[0]
    (chosen,) = [line for line in ax.get_lines() if line.get_gid() == CHOSEN_GID]
    assert list(chosen.get_xdata()) == [12.0] and list(chosen.get_ydata()) == [4.0]
    assert ax.get_ylim()[1] == 12.5  # the 400 GB overshoot is left above the chart
    assert "1 probe(s) above the chart" in ax.get_title(loc="left")
    assert ax.get_xscale() == "log"


def _sweep_rows(
    key: str, values: list[int], budget: int
) -> tuple[list[SweepRow], list[list[dict[str, int]]]]:
    """A sweep over one symbol whose peak grows linearly: 50 MB + 1 MB per unit."""
    rows = []
    for v in values:
        peak = 50 * 10**6 + v * 10**6
        rows.append(SweepRow({key: v}, 0, 0, 0, peak, {"gpu": peak <= budget}, ""))
    return rows, [[{key: v} for v in values]]


def _display_x(ax: Any, xs: list[int]) -> np.ndarray:
    return np.array([ax.transData.transform((x, ax.get_ylim()[1]))[0] for x in xs])


def _boxes(fig: Any, texts: list[Any]) -> list[Any]:
    renderer = fig.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in texts]


def _disjoint(boxes: list[Any]) -> bool:
    return not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_a_sweep_over_powers_of_two_is_spaced_by_log2_and_every_value_is_labelled(tmp_path: Path) -> None:
    values = [256, 512, 2048, 4096, 16384]  # one and two doublings apart: evenly spaced ticks would fail
    rows, axes = _sweep_rows("S", values, 10 * 10**9)
    fig = sweep_figure(rows, axes, [("gpu", 10 * 10**9)])
    save(fig, tmp_path / "sweep.png")
    ax = fig.axes[0]
    (line,) = [line for line in ax.get_lines() if line.get_label() == "peak"]
    assert list(line.get_xdata()) == values
    xs = _display_x(ax, values)
    per_doubling = np.diff(xs) / np.diff(np.log2(values))
    assert np.allclose(per_doubling, per_doubling[0]) and per_doubling[0] > 0
    assert list(ax.get_xticks()) == values
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    assert [t.get_text() for t in labels] == [str(v) for v in values]
    assert _disjoint(_boxes(fig, labels))
    assert ax.get_yscale() == "log"  # linear growth: a straight line, not a curve bending upward
    written = [t for t in ax.texts if t.get_gid() == VALUE_GID]
    assert [t.get_text() for t in written] == [short_bytes(r.peak_bytes) for r in rows]
    assert _disjoint(_boxes(fig, written))


def test_other_values_are_spaced_linearly(tmp_path: Path) -> None:
    values = [1, 3, 5, 7, 12]
    rows, axes = _sweep_rows("B", values, 10 * 10**9)
    fig = sweep_figure(rows, axes, [])
    save(fig, tmp_path / "sweep.png")
    ax = fig.axes[0]
    xs = _display_x(ax, values)
    per_unit = np.diff(xs) / np.diff(values)
    assert np.allclose(per_unit, per_unit[0]) and per_unit[0] > 0
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(v) for v in values]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0


@pytest.mark.parametrize(
    ("values", "scale"),
    [
        ([1, 2, 4, 8], "log2"),
        ([256, 4096], "log2"),
        ([1, 3, 5, 7], "linear"),
        ([144 * 256, 540 * 960, 1080 * 1920], "linear"),
        ([1, 2, 3, 1000], "log"),  # linear would crowd 1, 2 and 3 into one spot
        ([8], "linear"),
    ],
)
def test_axis_scale_is_decided_from_the_values(values: list[int], scale: str) -> None:
    assert axis_scale([float(v) for v in values]) == scale


def test_crowded_tick_labels_turn_upright_and_stay_apart(tmp_path: Path) -> None:
    sides = list(range(1000, 2500, 100))  # HxW=1000x1000,...: long labels, spaced by H*W
    axes = [[{"H": s, "W": s} for s in sides]]
    rows = [SweepRow({"H": s, "W": s}, 0, 0, 0, s * s * 100, {}, "") for s in sides]
    fig = sweep_figure(rows, axes, [])
    save(fig, tmp_path / "sweep.png")
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [s * s for s in sides]
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    assert [t.get_text() for t in labels] == [f"{s}x{s}" for s in sides]
    assert {t.get_rotation() for t in labels} == {90.0}  # flat, they would overlap
    assert _disjoint(_boxes(fig, labels))


def test_budget_lines_differ_in_colour_and_dash_and_are_in_the_legend(tmp_path: Path) -> None:
    values = [1, 2, 4, 8]
    rows, axes = _sweep_rows("B", values, 10**9)
    budgets = [("small", 30 * 10**6), ("large", 90 * 10**6)]
    fig = sweep_figure(rows, axes, budgets)
    path = tmp_path / "sweep.png"
    save(fig, path)
    ax = fig.axes[0]
    lines = {line.get_gid(): line for line in ax.get_lines()}
    first, second = lines[f"{BUDGET_GID}0"], lines[f"{BUDGET_GID}1"]
    assert first.get_color() != second.get_color()
    assert first.get_linestyle() != second.get_linestyle()
    legend = ax.get_legend()
    assert legend is not None
    texts = [t.get_text() for t in legend.get_texts()]
    assert any(t.startswith("budget on small") for t in texts) and any(
        t.startswith("budget on large") for t in texts
    )
    pixels = _pixels(path)
    unit = unit_for(max(b for _, b in budgets))
    left, right = ax.get_xlim()
    for j, (_, budget) in enumerate(budgets):
        colour = BUDGET_STYLES[j][0]
        along = [ax.transData.transform((x, budget / unit.size)) for x in np.geomspace(left, right, 40)[1:-1]]
        assert any(_near(pixels, x, y, colour, radius=1) for x, y in along), j


def test_a_budget_far_above_the_data_is_named_not_drawn() -> None:
    rows, axes = _sweep_rows("B", [1, 2, 4], 10**15)
    fig = sweep_figure(rows, axes, [("huge", 10**15)])
    ax = fig.axes[0]
    (budget,) = [line for line in ax.get_lines() if line.get_gid() == f"{BUDGET_GID}0"]
    assert list(budget.get_ydata()) == []
    assert "above the chart" in str(budget.get_label())
    assert ax.get_ylim()[1] < 10**15 / unit_for(10**15).size
