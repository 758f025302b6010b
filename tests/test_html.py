"""The HTML report: one self-contained page (nothing fetched) with the summary, the timeline as inline SVG,
the layer table, the diagnosis and the what-if rows; rendered by headless Chromium (installed by
.ci/setup where it can be), whose screenshot is checked to be neither blank nor broken."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_cli import BUILDERS

from memtrace.cli.main import cli
from memtrace.tracer.palette import CATEGORY_COLOURS, PEAK_COLOUR

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome", "headless_shell")
WIDTH, HEIGHT = 1280, 1800


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
    argv += ["--diagnose", "--html", str(html)]
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return html


def test_page_holds_every_part_and_fetches_nothing(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    for part in (
        "Memory over the step",
        "<svg",
        "Summary",
        "Peak ",
        "Layers (depth 2)",
        "Diagnosis",
        "What if",
    ):
        assert part in text, part
    lowered = text.lower()
    for needle in ("<script", "<link", 'src="http', "src='http", "url(http", "@import", "<img", "<iframe"):
        assert needle not in lowered, needle
    assert 'id="peak' in text  # the timeline's peak marker is in the inline SVG


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
    assert areas > 20_000  # the inline SVG drew its stacked areas (the page without it: about 7,000)
    assert count(PEAK_COLOUR) > 20  # and its peak marker
    dark = (pixels.sum(axis=2) < 200).mean(axis=1)
    assert (dark[:80] > 0).any()  # the title's text at the top
    assert (dark > 0).sum() > HEIGHT // 4  # text over the page, not one error line
