"""--gpu and the size options on the command line: a bare number is a model number or an error, checked
before the model is imported; `memtrace gpus` fits 80 columns."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from test_cli import run

from memtrace import pytest_plugin
from memtrace.cli.common import GpuType, HeadroomType
from memtrace.cli.main import cli
from memtrace.tracer.core.presets import PRESETS, model_number

SIZE_TYPES = (GpuType, HeadroomType)


def commands_taking(option: str) -> list[str]:
    """The subcommands with this option (of a size type), read from the CLI itself."""
    return sorted(
        name
        for name, command in cli.commands.items()
        for p in command.params
        if isinstance(p, click.Option) and option in p.opts and isinstance(p.type, SIZE_TYPES)
    )


def test_the_commands_with_size_options_are_found() -> None:
    assert {"trace", "fit", "sweep"} <= set(commands_taking("--gpu"))
    assert {"trace", "fit", "sweep"} <= set(commands_taking("--headroom"))


@pytest.fixture()
def loud_builder(tmp_path: Path) -> Path:
    """A builder file that leaves a mark, then raises, when imported."""
    path = tmp_path / "loud.py"
    path.write_text(
        "from pathlib import Path\n"
        "Path(__file__).with_suffix('.imported').write_text('imported')\n"
        "raise RuntimeError('the builder file was imported')\n"
    )
    return path


def refused(capsys: pytest.CaptureFixture[str], builder: Path, *argv: str) -> str:
    """The one line of stderr of a refused command line; exit code 2, the builder never imported."""
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    assert not builder.with_suffix(".imported").exists(), "the builder was imported before the error"
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def argv_of(command: str, builder: Path, *options: str) -> list[str]:
    head = [] if command == "" else [command]  # "": the default command, `memtrace MODEL ...`
    return [*head, f"{builder}:build", *options, "--input", "1x3"]


GPU_COMMANDS = ["", *commands_taking("--gpu")]
HEADROOM_COMMANDS = ["", *commands_taking("--headroom")]


@pytest.mark.parametrize("command", GPU_COMMANDS)
@pytest.mark.parametrize("number", ["24", "80"])
def test_a_bare_gpu_size_is_refused_first(
    capsys: pytest.CaptureFixture[str], loud_builder: Path, command: str, number: str
) -> None:
    line = refused(capsys, loud_builder, *argv_of(command, loud_builder, "--gpu", number))
    assert line == (
        f"memtrace: error: --gpu {number}: a size needs a unit ({number}GB, {number}GiB) "
        "or a preset (rtx4090, a100-40gb, ...)"
    )


@pytest.mark.parametrize("command", GPU_COMMANDS)
def test_an_ambiguous_gpu_is_refused_first(
    capsys: pytest.CaptureFixture[str], loud_builder: Path, command: str
) -> None:
    line = refused(capsys, loud_builder, *argv_of(command, loud_builder, "--gpu", "a100"))
    assert line == "memtrace: error: --gpu a100 is ambiguous: a100-40gb or a100-80gb"


@pytest.mark.parametrize("command", HEADROOM_COMMANDS)
def test_a_bare_headroom_is_refused_first(
    capsys: pytest.CaptureFixture[str], loud_builder: Path, command: str
) -> None:
    options = ("--headroom", "512", "--gpu", "rtx4090")
    line = refused(capsys, loud_builder, *argv_of(command, loud_builder, *options))
    assert line.startswith("memtrace: error: --headroom 512: a size needs a unit (512MB, 512MiB)")


def test_a_missing_builder_file_still_gets_the_gpu_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "missing_file.py:build", "--input", "1x3", "--gpu", "24")
    assert code == 2 and err.startswith("memtrace: error: --gpu 24: a size needs a unit"), err


@pytest.mark.parametrize("command", commands_taking("--gpu"))
@pytest.mark.parametrize("number", sorted({n for p in PRESETS.values() if (n := model_number(p))}))
def test_a_model_number_resolves_on_the_command_line(command: str, number: str) -> None:
    """Parsing only: make_context converts the options given and runs nothing (resilient: sweep's --set
    may be missing)."""
    ctx = cli.commands[command].make_context(command, ["x.py:build", "--gpu", number], resilient_parsing=True)
    gpu = ctx.params.get("gpu") or ctx.params["gpus"][0]
    assert gpu.name.endswith(number) and gpu.bytes == PRESETS[gpu.name].memory_bytes


def test_headroom_0_and_a_gpu_preset_still_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    builder = tmp_path / "small.py"
    builder.write_text("from torch import nn\ndef build():\n    return nn.Linear(16, 4)\n")
    code, out, err = run(
        capsys, f"{builder}:build", "--input", "2x16", "--gpu", "4090", "--headroom", "0", "--json"
    )
    assert code == 0, err
    verdict = json.loads(out)["verdict"]
    assert verdict["gpu"] == {"name": "rtx4090", "bytes": PRESETS["rtx4090"].memory_bytes}
    assert verdict["budget_bytes"] == PRESETS["rtx4090"].memory_bytes  # --headroom 0: nothing kept


def test_the_pytest_plugin_refuses_a_bare_limit_and_gpu() -> None:
    for kwargs, needle in (
        ({"limit": "1000"}, "memtrace_limit: limit 1000: a size needs a unit (1000MB, 1000MiB)"),
        ({"limit": "1 GiB", "gpu": "24"}, "memtrace_limit: gpu 24: a size needs a unit (24GB, 24GiB)"),
        ({"limit": "1 GiB", "headroom": "512"}, "memtrace_limit: headroom 512: a size needs a unit"),
    ):
        with pytest.raises(pytest.fail.Exception) as caught:
            pytest_plugin.check_limit(model="missing_file.py:build", input="1x3", **kwargs)
        assert str(caught.value).startswith(needle), caught.value


def test_gpus_fits_80_columns() -> None:
    result = CliRunner().invoke(cli, ["gpus"], env={"COLUMNS": "80"}, catch_exceptions=False)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, result.output
    assert "…" not in result.output and "..." not in result.output
    for p in PRESETS.values():  # every cell whole: each row holds the preset's figures in full
        row = next(line for line in lines if line.startswith(p.name + " "))
        assert f"{p.memory_bytes:,}" in row and p.description in row and p.compute_capability in row
        assert f"{p.memory_bytes / 2**30:.2f}" in row


def test_gpus_shows_the_short_names_and_the_ambiguous_ones() -> None:
    output = CliRunner().invoke(cli, ["gpus"], env={"COLUMNS": "80"}).output
    rows = {line.split()[0]: line for line in output.splitlines() if line.split()}
    assert "4090" in rows["rtx4090"].split() and "h100" in rows["h100-80gb"].split()
    assert "a100 (a100-40gb, a100-80gb)" in output and "v100 (v100-16gb, v100-32gb)" in output
