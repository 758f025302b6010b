"""`memtrace show RESULT.json`: the saved report printed again, byte for byte, without re-tracing; its
pictures; one-line errors for files that are no result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_cli import BUILDERS

from memtrace.cli.main import cli, main
from memtrace.tracer.core.records import SCHEMA_VERSION

REPO = Path(__file__).resolve().parent.parent
SEED = str(REPO / "benchmarks" / "models" / "seed_cnn.py") + ":build"


def _invoke(*argv: str) -> str:
    result = CliRunner().invoke(cli, list(argv), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture()
def mlp(tmp_path: Path) -> str:
    path = tmp_path / "builders.py"
    path.write_text(BUILDERS)
    return f"{path}:mlp"


@pytest.mark.parametrize(
    "flags",
    [
        (),
        ("--layers", "--depth", "1", "--sort", "memory"),
        ("--device", "cpu", "--gpu", "12GB", "--optimizer", "sgd:momentum=0.9"),
    ],
)
def test_show_prints_the_report_again_byte_for_byte(mlp: str, tmp_path: Path, flags: tuple[str, ...]) -> None:
    saved = tmp_path / "r.json"
    first = _invoke("trace", mlp, "--input", "8x16", *flags, "--output", str(saved))
    again = _invoke("show", str(saved), *(("--layers",) if "--layers" in flags else ()))
    assert again == first
    assert "Peak " in first and "Live at the peak" in first
    if "--layers" in flags:
        assert "Layers (depth 1)" in again


def test_show_with_what_if_and_diagnosis(tmp_path: Path) -> None:
    saved = tmp_path / "r.json"
    argv = (SEED, "--input", "2x3x144x256", "--what-if", "--diagnose", "--gpu", "rtx4070")
    first = _invoke("trace", *argv, "--output", str(saved))
    assert "What if (each row simulated)" in first and "Diagnosis" in first
    assert _invoke("show", str(saved)) == first


def test_saved_result_keeps_the_flags_and_the_timeline(mlp: str, tmp_path: Path) -> None:
    saved = tmp_path / "r.json"
    _invoke("trace", mlp, "--input", "8x16", "--optimizer", "sgd:momentum=0.9", "--output", str(saved))
    data = json.loads(saved.read_text())
    assert data["schema"] == SCHEMA_VERSION
    assert data["flags"]["optimizer"] == "sgd:momentum=0.9"
    assert data["flags"]["inputs"] == ["8x16"]
    assert data["flags"]["output"] == str(saved)
    timeline = data["timeline"]
    totals = [sum(col) for col in zip(*timeline["by_category"].values(), strict=True)]
    assert max(totals) == data["peak_bytes"]
    assert timeline["index"][totals.index(max(totals))] == timeline["peak_index"]


def test_show_writes_the_pictures(mlp: str, tmp_path: Path) -> None:
    saved = tmp_path / "r.json"
    _invoke("trace", mlp, "--input", "8x16", "--output", str(saved))
    _invoke("show", str(saved), "--plot", str(tmp_path / "p.svg"), "--html", str(tmp_path / "r.html"))
    assert "<svg" in (tmp_path / "p.svg").read_text()
    assert '<img src="data:image/png;base64,' in (tmp_path / "r.html").read_text()


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("memtrace: error: "), err
    return lines[0]


def test_show_refuses_what_is_no_result(capsys: pytest.CaptureFixture[str], mlp: str, tmp_path: Path) -> None:
    assert "no such file" in _error(capsys, "show", str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    assert "not a memtrace result" in _error(capsys, "show", str(tmp_path / "bad.json"))
    (tmp_path / "other.json").write_text('{"hello": 1}')
    assert "not a memtrace result" in _error(capsys, "show", str(tmp_path / "other.json"))
    saved = tmp_path / "r.json"
    _invoke("trace", mlp, "--input", "8x16", "--output", str(saved))
    data = json.loads(saved.read_text())
    (tmp_path / "future.json").write_text(json.dumps({**data, "schema": 99}))
    assert "schema 99" in _error(capsys, "show", str(tmp_path / "future.json"))
    assert "one of .png, .svg" in _error(capsys, "show", str(saved), "--plot", str(tmp_path / "p.jpg"))
    old = {k: v for k, v in data.items() if k not in ("timeline", "flags")} | {"schema": 2}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert "Peak " in _invoke("show", str(tmp_path / "old.json"))  # schema 2 still reads
    assert "no timeline" in _error(
        capsys, "show", str(tmp_path / "old.json"), "--plot", str(tmp_path / "p.png")
    )


def test_every_figure_is_named_and_the_step_said_as_it_ran(mlp: str, tmp_path: Path) -> None:
    """The peak is the allocated figure, cached-but-unused memory is the reserved peak's, and an inference
    step's FLOPs are the forward's alone; a saved schema-3 result still says so when shown."""
    train = _invoke("trace", mlp, "--input", "8x16", "--gpu", "12GB")
    assert "Peak allocated: " in train and "cached but unused at the reserved peak" in train
    assert "GFLOP per step (forward, loss, backward and any recompute)" in train
    infer = _invoke("trace", mlp, "--input", "8x16", "--mode", "infer")
    assert "GFLOP per step (forward only, no loss)" in infer and "backward" not in infer
    saved = tmp_path / "r.json"
    _invoke("trace", mlp, "--input", "8x16", "--gpu", "12GB", "--output", str(saved))
    old = json.loads(saved.read_text()) | {"schema": 3}
    old["verdict"] = {k: v for k, v in old["verdict"].items() if not k.startswith(("status", "uncertain"))}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert "Fits on 12GB" in _invoke("show", str(tmp_path / "old.json"))
