"""One colour per category and per phase, shared by the plots, the HTML report and the terminal tables.

Colours are hex strings: matplotlib, SVG, CSS and rich all read them. Pure: no torch, no matplotlib.
"""

from __future__ import annotations

from ..core.records import Category, Phase

# the order categories stack in (bottom first) and are listed in: what exists before the step, then the rest
CATEGORY_ORDER: tuple[Category, ...] = (
    Category.PARAMETER,
    Category.BUFFER,
    Category.KV_CACHE,
    Category.GRADIENT,
    Category.OPTIMIZER_STATE,
    Category.ACTIVATION,
    Category.TEMPORARY,
    Category.INPUT,
    Category.OUTPUT,
    Category.WORKSPACE,
)
CATEGORY_ORDER += tuple(c for c in Category if c not in CATEGORY_ORDER)

_COLOURS = {
    "parameter": "#4c72b0",
    "buffer": "#8c8c8c",
    "gradient": "#dd8452",
    "optimizer_state": "#8172b3",
    "activation": "#55a868",
    "temporary": "#c44e52",
    "input": "#937860",
    "output": "#da8bc3",
    "workspace": "#64b5cd",
    "communication": "#ccb974",
    "kv_cache": "#2a9d8f",
}
OTHER_COLOUR = "#7f7f7f"  # a category added later without a colour of its own
CATEGORY_COLOURS: dict[Category, str] = {c: _COLOURS.get(c.value, OTHER_COLOUR) for c in Category}

PHASE_COLOURS: dict[Phase, str] = {
    Phase.SETUP: "#bbbbbb",
    Phase.FORWARD: "#4c72b0",
    Phase.LOSS: "#937860",
    Phase.BACKWARD: "#dd8452",
    Phase.RECOMPUTE: "#55a868",
    Phase.OPTIMIZER: "#8172b3",
    Phase.PREFILL: "#4c72b0",
    Phase.DECODE: "#2a9d8f",
}

PEAK_COLOUR = "#d62728"
BUDGET_COLOUR = "#222222"
# one (colour, dash) per budget line, so two GPUs' budgets tell apart in print and in grey; none of
# matplotlib's series colours (C0..C9), which the scaling figures' lines take
Dash = str | tuple[int, tuple[int, ...]]  # matplotlib's linestyle: a name, or (offset, on-off lengths)
BUDGET_STYLES: tuple[tuple[str, Dash], ...] = (
    (BUDGET_COLOUR, "--"),
    ("#b5651d", "-."),
    ("#6a3d9a", ":"),
    ("#2f6f4f", (0, (6, 2, 1, 2, 1, 2))),
)
RESERVED_COLOUR = "#17becf"
