"""The step's flags on the command line: keyword inputs, losses, --free-output, --step, inference modes,
builders that print under --json, and one-line refusals."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from test_cli import run

BUILDERS = textwrap.dedent(
    """
    import torch
    from torch import nn

    class KwModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 32)
            self.head = nn.Linear(32, 100)
        def forward(self, input_ids, attention_mask=None):
            x = self.emb(input_ids)
            if attention_mask is not None:
                x = x * attention_mask.unsqueeze(-1)
            return self.head(x)

    def kw():
        return KwModel()

    def kw_examples():
        return KwModel(), {"input_ids": torch.zeros(2, 16, dtype=torch.long)}

    def chatty():
        print("number of parameters: 0.01M")
        return nn.Linear(16, 4)

    def step(model, inputs, optimizer):
        out = model(**inputs)
        print("loss computed")
        out.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    """
)


@pytest.fixture()
def builders(tmp_path: Path) -> str:
    path = tmp_path / "stepbuilders.py"
    path.write_text(BUILDERS)
    return str(path)


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    data: dict[str, object] = json.loads(out)
    return data


def test_keyword_inputs_and_cross_entropy(capsys: pytest.CaptureFixture[str], builders: str) -> None:
    args = [f"{builders}:kw", "--input", "input_ids=2x16:int64", "--input", "attention_mask=2x16:int64"]
    data = _json(capsys, *args, "--loss", "ce", "--device", "cpu")
    assert data["inputs"] == [
        {"shape": [2, 16], "dtype": "int64", "name": "input_ids"},
        {"shape": [2, 16], "dtype": "int64", "name": "attention_mask"},
    ]
    assert data["loss"] == "ce" and data["step"] == "default" and data["free_output"] is False
    freed = _json(capsys, *args, "--loss", "ce", "--device", "cpu", "--free-output")
    assert freed["free_output"] is True and freed["peak_bytes"] < data["peak_bytes"]  # type: ignore[operator]


def test_builder_examples_as_a_dict(capsys: pytest.CaptureFixture[str], builders: str) -> None:
    data = _json(capsys, f"{builders}:kw_examples")
    assert data["inputs"] == [{"shape": [2, 16], "dtype": "int64", "name": "input_ids"}]


def test_user_step_and_what_if_skips_rows_it_cannot_apply(
    capsys: pytest.CaptureFixture[str], builders: str
) -> None:
    code, out, err = run(
        capsys, f"{builders}:kw", "--input", "input_ids=2x16:int64", "--step", f"{builders}:step", "--what-if"
    )
    assert code == 0, err
    assert f"your {builders}:step" in out
    assert "skipped" in out and "--amp would change your own step" in out
    assert "SGD with momentum" in out  # the optimizer is memtrace's to change: simulated
    assert "loss computed" in out  # the user's print, on stdout without --json


def test_json_stays_clean_when_user_code_prints(capsys: pytest.CaptureFixture[str], builders: str) -> None:
    code, out, err = run(capsys, f"{builders}:chatty", "--input", "8x16", "--json")
    assert code == 0, err
    json.loads(out)
    assert "number of parameters" in err
    code, out, err = run(
        capsys, f"{builders}:kw", "--input", "input_ids=2x16:int64", "--step", f"{builders}:step", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["step"] == f"{builders}:step" and "loss computed" in err


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--loss", "ce"], "--loss would change your own step"),
        (["--amp", "bf16"], "--amp would change your own step"),
        (["--accumulate", "2"], "--accumulate would change your own step"),
        (["--free-output"], "--free-output would change your own step"),
    ],
)
def test_step_refusals_are_one_line(
    capsys: pytest.CaptureFixture[str], builders: str, extra: list[str], needle: str
) -> None:
    code, _out, err = run(
        capsys, f"{builders}:kw", "--input", "input_ids=2x16:int64", "--step", f"{builders}:step", *extra
    )
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--loss", "hinge"], "unknown --loss 'hinge'"),
        (["--input", "x=2x16:int64", "--input", "x=2x16:int64"], "input 'x' is given twice"),
        (["--step", "nofile"], "malformed --step"),
        (["--loss", "ce", "--loss-class-dim", "5"], "--loss-class-dim 5 is out of range"),
    ],
)
def test_bad_step_flags(
    capsys: pytest.CaptureFixture[str], builders: str, argv: list[str], needle: str
) -> None:
    code, out, err = run(capsys, f"{builders}:kw", "--input", "input_ids=2x16:int64", *argv)
    assert code == 2, (out, err)
    assert needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("mode", ["infer", "no_grad"])
def test_inference_modes(capsys: pytest.CaptureFixture[str], builders: str, mode: str) -> None:
    data = _json(capsys, f"{builders}:kw", "--input", "input_ids=2x16:int64", "--mode", mode)
    assert data["mode"] == mode and data["loss"] == ""
