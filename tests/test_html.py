"""The HTML report: one self-contained page (nothing fetched) with the timeline drawn once (an embedded
PNG) and the terminal report's tables as HTML tables (summary, categories, phases, tensors, layers,
diagnosis, what-ifs) holding the result's numbers; rendered by headless Chromium (installed by .ci/setup
where it can be), whose screenshot is checked to be neither blank nor broken."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_cli import BUILDERS

from memtrace.cli.main import cli
from memtrace.tracer.core.records import Result
from memtrace.tracer.core.specs import short_bytes
from memtrace.tracer.outputs.palette import CATEGORY_COLOURS, PEAK_COLOUR
from memtrace.tracer.outputs.plots import DPI, HTML_DPI, SIZE_INCHES, timeline_figure

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome", "headless_shell")
WIDTH, HEIGHT = 1280, 1800
FIGURES = {  # the columns of figures, in the terminal's words
    *("bytes", "size", "share", "allocated in the step", "peak", "new peak", "saved", "saved %", "FLOPs x"),
    *("params", "param bytes", "grad + optim", "saved acts", "at peak", "FLOPs"),
}


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("html")
    builders = root / "builders.py"
    builders.write_text(BUILDERS)
    html = root / "report.html"
    argv = [
        "trace",
        f"{builders}:mlp",
        "--input",
        "64x16",
        "--gpu",
        "40MB",
        "--headroom",
        "0",
        "--layers",
        "--what-if",
    ]
    argv += ["--diagnose", "--html", str(html), "--output", str(root / "result.json")]
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return html


@pytest.fixture(scope="module")
def data(page: Path) -> dict[str, Any]:
    """The result the page was made from (trace --output)."""
    loaded: dict[str, Any] = json.loads((page.parent / "result.json").read_text())
    return loaded


class Tables(HTMLParser):
    """Each <table>: its caption, its sections (thead, tbody, tfoot) and its cells as (section, tag, class,
    text) rows."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, Any]] = []
        self.section = ""
        self.cell: list[str] | None = None
        self.in_caption = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append({"caption": "", "sections": [], "rows": []})
        elif tag in ("thead", "tbody", "tfoot"):
            self.section = tag
            self.tables[-1]["sections"].append(tag)
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self.cell = [self.section, tag, dict(attrs).get("class") or "", ""]
        elif tag == "caption":
            self.in_caption = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1]["rows"][-1].append(tuple(self.cell))
            self.cell = None
        elif tag == "caption":
            self.in_caption = False

    def handle_data(self, text: str) -> None:
        if self.cell is not None:
            self.cell[3] += text
        elif self.in_caption:
            self.tables[-1]["caption"] += text


def _tables(text: str) -> dict[str, dict[str, Any]]:
    parser = Tables()
    parser.feed(text)
    return {t["caption"]: t for t in parser.tables}


def _column(table: dict[str, Any], name: str) -> list[tuple[str, str, str, str]]:
    """The body cells under the header `name`."""
    head = [c[3] for c in table["rows"][0]]
    at = head.index(name)
    return [row[at] for row in table["rows"][1:] if row and row[0][0] == "tbody"]


def test_page_holds_every_part_and_fetches_nothing(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    for part in ("Memory over the step", "Summary", "Layers (depth 2)", "Diagnosis", "What if"):
        assert part in text, part
    lowered = text.lower()
    for needle in ("<script", "<link", "http:", "https:", "url(", "@import", "<iframe", "<svg"):
        assert needle not in lowered, needle
    assert re.findall(r"<img [^>]*src=\"([^\":]*):", text) == ["data"]  # one picture, embedded


def test_the_picture_is_drawn_once_at_the_html_dpi(page: Path, data: dict[str, Any]) -> None:
    text = page.read_text(encoding="utf-8")
    (encoded,) = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert image.size == (SIZE_INCHES[0] * HTML_DPI, SIZE_INCHES[1] * HTML_DPI)
    assert f'width="{SIZE_INCHES[0] * DPI:g}"' in text  # shown at the figure's own size
    # today's page (before this change) carried the timeline as an inline SVG: the whole page is now
    # smaller than that SVG alone, however long the step
    svg = io.StringIO()
    timeline_figure(Result.from_json(data)).savefig(svg, format="svg")
    assert len(text.encode()) < len(svg.getvalue().encode())


def test_the_terminal_tables_are_html_tables_with_the_numbers(page: Path, data: dict[str, Any]) -> None:
    text = page.read_text(encoding="utf-8")
    assert not re.search("[\u2500-\u257f]", text)  # no box drawing: no terminal text left
    assert "<pre" not in text
    tables = _tables(text)
    for caption in (
        "Peak and budget, in the report's units and in bytes",
        "Live at the peak, by category",
        "Peak per phase",
        "Largest tensors at the peak",
        "Layers holding the most at the peak",
        "Layers (depth 2)",
        "What would help (each re-simulated)",
        "What if (each row simulated)",
    ):
        assert caption in tables, caption
        assert tables[caption]["sections"][:2] == ["thead", "tbody"], caption
    peak = data["peak"]
    summary = tables["Peak and budget, in the report's units and in bytes"]
    assert ("tbody", "td", "num", f"{peak['bytes']:,}") in summary["rows"][1]
    categories = tables["Live at the peak, by category"]
    by_bytes = {c[3] for c in _column(categories, "bytes")}
    assert {f"{b:,}" for b in peak["by_category"].values() if b} <= by_bytes
    assert all(c[2] == "num" for c in _column(categories, "bytes") + _column(categories, "share"))
    assert categories["rows"][-1][1][3] == f"{peak['bytes']:,}"  # the totals line, in <tfoot>
    assert categories["rows"][-1][1][0] == "tfoot"
    tensors = _column(tables["Largest tensors at the peak"], "size")
    assert [c[3] for c in tensors] == [short_bytes(t["nbytes"]) for t in peak["top_tensors"]]
    layers = tables["Layers (depth 2)"]
    assert [c[3].strip() for c in _column(layers, "layer")] == [r["name"] for r in data["layers"]]
    assert [c[3] for c in _column(layers, "params")] == [f"{r['parameters']:,}" for r in data["layers"]]
    what_if = _column(tables["What if (each row simulated)"], "change")
    assert [c[3] for c in what_if[1:]] == [r["change"] for r in data["what_if"]]
    for table in tables.values():  # figures right-aligned, words (layer names "0", "1" too) not
        head = [c[3] for c in table["rows"][0]]
        for row in table["rows"]:
            for cell, name in zip(row, head, strict=True):
                assert ("num" in cell[2].split()) == (name in FIGURES), (table["caption"], name, cell)


def _browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


def _rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])


def test_page_renders_in_headless_chromium(page: Path, tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium here: .ci/setup installs it with apt where it runs as root")
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    cmd += ["--host-resolver-rules=MAP * ~NOTFOUND", f"--window-size={WIDTH},{HEIGHT}"]
    cmd += [f"--screenshot={shot}", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert shot.exists(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (HEIGHT, WIDTH, 3)
    assert pixels.std() > 20  # not blank
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200

    def count(colour: str) -> int:
        return int((np.abs(pixels - _rgb(colour)).sum(axis=2) < 24).sum())

    areas = sum(count(c) for c in CATEGORY_COLOURS.values())
    assert areas > 20_000  # the picture drew its stacked areas (the tables' swatches: a few hundred)
    assert count(PEAK_COLOUR) > 20  # and its peak marker
    dark = (pixels.sum(axis=2) < 200).mean(axis=1)
    assert (dark[:80] > 0).any()  # the title's text at the top
    assert (dark > 0).sum() > HEIGHT // 4  # text over the page, not one error line
