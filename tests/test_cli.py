"""The command line: the main job end to end, JSON keys, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from memtrace.cli.main import main
from memtrace.tracer.core.records import Result

REPO = Path(__file__).resolve().parent.parent
SEED = str(REPO / "benchmarks" / "models" / "seed_cnn.py") + ":build"

BUILDERS = textwrap.dedent(
    """
    import torch
    from torch import nn

    def mlp(width=64):
        return nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 4))

    def broken():
        raise ValueError("no weights for this variant")

    def not_a_model():
        return 42

    def with_examples():
        return nn.Linear(8, 2), (torch.zeros(3, 8),)

    def explicit_device():
        m = nn.Linear(8, 2)
        m.register_buffer("table", torch.zeros(4, device="cpu"))
        return m

    LIBS = []

    def no_meta_kernel():
        try:  # an op with a CPU kernel only; an earlier import of this file may have defined it
            lib = torch.library.Library("memtrace_cli_test", "DEF")
            lib.define("twice(Tensor x) -> Tensor")
            lib.impl("twice", lambda x: x * 2, "CPU")
            LIBS.append(lib)
        except RuntimeError:
            pass

        class M(nn.Module):
            def forward(self, x):
                return torch.ops.memtrace_cli_test.twice(x)
        return nn.Sequential(nn.Linear(8, 8), M())

    def data_dependent():
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(8, 2)
            def forward(self, x):
                if x.sum().item() > 0:
                    return self.fc(x)
                return self.fc(-x)
        return M()
    """
)


_ITEM_LINE = next(i for i, line in enumerate(BUILDERS.splitlines(), 1) if ".item() > 0" in line)


@pytest.fixture()
def builders(tmp_path: Path) -> str:
    path = tmp_path / "builders.py"
    path.write_text(BUILDERS)
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_seed_cnn_1080p_names_fc1_and_gives_a_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, SEED, "--arg", "h=1080", "--arg", "w=1920", "--input", "1x3x1080x1920", "--gpu", "rtx4070"
    )
    assert code == 0, err
    assert "Dominant: fc1 (Linear)" in out
    assert "Borderline on rtx4070" in out  # fits by the simulation; cuDNN's workspace bound could break it
    code, out, err = run(
        capsys, SEED, "--arg", "h=1080", "--arg", "w=1920", "--input", "1x3x1080x1920", "--gpu", "8GiB"
    )
    assert code == 0 and "Does not fit on 8GiB" in out


def test_json_keys_and_roundtrip(capsys: pytest.CaptureFixture[str], builders: str, tmp_path: Path) -> None:
    out_file = tmp_path / "r.json"
    code, out, err = run(capsys, f"{builders}:mlp", "--input", "8x16", "--json", "--output", str(out_file))
    assert code == 0, err
    data = json.loads(out)
    for key in ("schema", "peak_bytes", "by_category", "phases", "device", "mode", "inputs"):
        assert key in data
    assert isinstance(data["peak_bytes"], int) and data["peak_bytes"] > 0
    assert sum(data["by_category"].values()) == data["peak_bytes"]
    assert data["device"] == "cuda" and data["mode"] == "train"
    assert json.loads(out_file.read_text()) == data
    assert "layers" in data
    core = {k: v for k, v in data.items() if k != "layers"}
    assert Result.from_json(core).to_json() == core


def test_builder_args_examples_and_infer(capsys: pytest.CaptureFixture[str], builders: str) -> None:
    code, out, _ = run(capsys, f"{builders}:mlp", "--arg", "width=128", "--input", "8x16", "--json")
    wide = json.loads(out)["model"]["parameters"]
    assert code == 0 and wide == 16 * 128 + 128 + 128 * 4 + 4
    code, out, _ = run(capsys, f"{builders}:with_examples", "--mode", "infer", "--json", "--device", "cpu")
    data = json.loads(out)
    assert (
        code == 0
        and data["inputs"] == [{"shape": [3, 8], "dtype": "float32", "name": None}]
        and data["mode"] == "infer"
    )


def test_builder_with_real_tensors_falls_back(capsys: pytest.CaptureFixture[str], builders: str) -> None:
    code, out, err = run(capsys, f"{builders}:explicit_device", "--input", "4x8", "--json")
    assert code == 0, err
    assert json.loads(out)["model"]["build_path"].startswith("patched")


BAD = [
    (["missing.py:build", "--input", "1x3"], "file not found: missing.py"),
    (["{b}:nope", "--input", "1x3"], "has no attribute 'nope'"),
    (["{b}:broken", "--input", "1x3"], "no weights for this variant"),
    (["{b}:not_a_model", "--input", "1x3"], "not an nn.Module"),
    (["{b}:mlp", "--input", "1x3xabc"], "1x3xabc"),
    (["{b}:mlp", "--input", "0x3"], "must be positive"),
    (["{b}:mlp", "--input", "2x16:float8"], "unknown dtype 'float8'"),
    (["{b}:mlp", "--input", "2x8"], "the forward pass failed in module"),
    (["{b}:mlp", "--input", "2x16", "--optimizer", "adamx"], "unknown optimizer 'adamx'"),
    (["{b}:mlp", "--input", "2x16", "--optimizer", "sgd:momentum=-1"], "rejected its arguments"),
    (["{b}:mlp", "--input", "2x16", "--gpu", "gtx9999"], "unknown GPU 'gtx9999'"),
    (["{b}:mlp", "--input", "2x16", "--gpu", "12XB"], "12XB"),
    (
        ["{b}:data_dependent", "--input", "2x8"],
        f"builders.py:{_ITEM_LINE}: .item() (or int(), float(), bool()) reads a value of a tensor in "
        "module 'M'",
    ),
    (["{b}:mlp"], "no input given"),
    (["{b}:no_meta_kernel", "--input", "2x8"], "memtrace_cli_test::twice has no meta kernel"),
]


@pytest.mark.parametrize("argv,needle", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], builders: str, argv: list[str], needle: str
) -> None:
    code, out, err = run(capsys, *[a.replace("{b}", builders) for a in argv])
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("memtrace: error: ")
    assert needle in lines[0]
    assert "Traceback" not in err + out


def test_help_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, memtrace.cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
