"""`--hf-args FILE`: TrainingArguments-like keys as memtrace's flags; they fill the flags the command line
leaves unset, a conflict is one line and exit 2, unknown keys one note line; `--checkpoint auto` (what
`gradient_checkpointing` means) held against the CPU allocator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_cli import run

from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.core.hf_args import hf_args
from memtrace.tracer.core.specs import parse_input, parse_optimizer
from memtrace.tracer.engine.recipes import Recipe, checkpoint_targets
from memtrace.tracer.real.measure import measure_request
from memtrace.tracer.simulate import Config, Request, run_recorded

pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")
pytest.importorskip("transformers")

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
QLORA = f"{MODELS / 'hf_qlora.py'}:build"
QLORA_ARGS = {
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 2,
    "bf16": True,
    "gradient_checkpointing": True,
    "optim": "paged_adamw_8bit",
    "max_length": 64,
    "learning_rate": 2e-4,
    "packing": False,
}


def _file(tmp_path: Path, data: dict[str, Any], name: str = "args.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_the_keys_as_flags() -> None:
    asked = hf_args(QLORA_ARGS, "args.json")
    assert asked.flags == {
        "amp": "bf16",
        "accumulate": 2,
        "checkpoint": ("auto",),
        "optimizer": "hf:paged_adamw_8bit",
    }
    assert (asked.batch, asked.sequence, asked.unread) == (2, 64, ("packing",))
    trainer = hf_args({"max_seq_length": 128}, "args.json")  # TRL's older name; the Trainer's defaults
    assert (trainer.batch, trainer.sequence, trainer.flags["optimizer"]) == (8, 128, "hf:adamw_torch_fused")


def test_torch_compile_keys_are_the_compile_flags() -> None:
    assert hf_args({"torch_compile": True}, "a.json").flags["compile_model"] is True
    mode = hf_args({"torch_compile_mode": "max-autotune"}, "a.json").flags  # a mode turns compiling on
    assert (mode["compile_model"], mode["compile_mode"]) == (True, "max-autotune")
    backend = hf_args({"torch_compile_backend": "aot_eager"}, "a.json").flags
    assert (backend["compile_model"], backend["compile_backend"]) == (True, "aot_eager")
    assert "compile_model" not in hf_args({"torch_compile": False}, "a.json").flags


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"torch_compile_mode": "fastest"}, "torch_compile_mode='fastest' is not one of"),
        ({"torch_compile_backend": "tvm"}, "torch_compile_backend='tvm' is not one of"),
        ({"bf16": True, "fp16": True}, "both true"),
        ({"optim": "adamw_tensorflow"}, "unknown optim 'adamw_tensorflow'"),
        ({"per_device_train_batch_size": 0}, "positive integer"),
        ({"max_length": 64, "max_seq_length": 128}, "differ"),
    ],
)
def test_bad_keys_are_one_line(data: dict[str, Any], message: str) -> None:
    with pytest.raises(MemtraceError, match=message):
        hf_args(data, "args.json")


def _peak(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code, out, err = run(capsys, QLORA, "--device", "cpu", "--json", *argv)
    assert code == 0, err
    return int(json.loads(out)["peak_bytes"]), err


def test_the_file_is_the_flags_it_means(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _file(tmp_path, QLORA_ARGS)
    from_file, err = _peak(capsys, "--hf-args", args)
    flags = (
        "--amp",
        "bf16",
        "--accumulate",
        "2",
        "--checkpoint",
        "auto",
        "--optimizer",
        "hf:paged_adamw_8bit",
    )
    inputs = ("--input", "input_ids=2x64:int64", "--input", "labels=2x64:int64")
    assert from_file == _peak(capsys, *flags, *inputs)[0]
    assert "--amp bf16 --accumulate 2 --checkpoint auto --optimizer hf:paged_adamw_8bit" in err
    assert "keys not read: packing" in err
    agreeing, _ = _peak(capsys, "--hf-args", args, "--amp", "bf16", *inputs)  # the same values: no conflict
    assert agreeing == from_file


def test_yaml_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "args.yaml"
    path.write_text("per_device_train_batch_size: 1\nmax_length: 32\noptim: sgd\n")
    code, _, err = run(capsys, QLORA, "--device", "cpu", "--hf-args", str(path))
    assert code == 0, err
    assert "--optimizer hf:sgd --input input_ids=1x32:int64 --input labels=1x32:int64" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--amp", "fp16"), "bf16=true means --amp bf16, but the command line gives --amp fp16"),
        (("--optimizer", "adamw"), "optim=paged_adamw_8bit means --optimizer hf:paged_adamw_8bit"),
        (("--input", "input_ids=4x64:int64"), "per_device_train_batch_size=2 but --input"),
        (("--input", "input_ids=2x128:int64"), "max_length=64 but --input"),
    ],
)
def test_a_conflict_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], message: str
) -> None:
    code, _, err = run(capsys, QLORA, "--device", "cpu", "--hf-args", _file(tmp_path, QLORA_ARGS), *flags)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_no_sequence_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, QLORA, "--hf-args", _file(tmp_path, {"bf16": True}))
    assert code == 2 and "the sequence length is unknown" in err


def test_checkpoint_auto_is_each_decoder_layer() -> None:
    from memtrace.tracer.engine.loader import load_object

    llama = load_object(f"{MODELS / 'hf_llama.py'}:build")(layers=3, hidden=64, heads=4, kv_heads=4)
    assert checkpoint_targets(llama, ("auto",)) == ["model.layers.0", "model.layers.1", "model.layers.2"]


def test_the_qlora_file_matches_the_cpu_allocator() -> None:
    recipe = Recipe("bf16", None, ("auto",), 2)
    config = Config(optimizer=parse_optimizer("hf:paged_adamw_8bit"), device="cpu", recipe=recipe)
    inputs = (parse_input("input_ids=2x64:int64"), parse_input("labels=2x64:int64"))
    request = Request(QLORA, inputs, (("rank", 32),), config)
    simulated = run_recorded(request).result.peak.bytes
    measured = measure_request(request).peak
    assert abs(simulated - measured) <= 0.01 * measured, (simulated, measured)
