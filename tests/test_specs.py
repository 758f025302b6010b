from __future__ import annotations

import pytest

from memtrace.tracer.core.presets import PRESETS, model_number
from memtrace.tracer.core.specs import (
    OptionError,
    SpecError,
    human_bytes,
    parse_gpu,
    parse_headroom,
    parse_input,
    parse_kv,
    parse_optimizer,
    parse_size,
    parse_target,
    parse_tolerance,
)


def test_inputs() -> None:
    spec = parse_input("1x3x1080x1920")
    assert spec.shape == (1, 3, 1080, 1920) and spec.dtype == "float32"
    assert parse_input("4x128:int64").dtype == "int64"
    assert parse_input("2x8:bf16").dtype == "bfloat16"
    assert parse_input("Bx3x224x224").shape == ("B", 3, 224, 224)


@pytest.mark.parametrize("text", ["1x3xabc", "0x3", "1x3:float8", "", "1xx3", "-1x3", ":fp16"])
def test_bad_inputs(text: str) -> None:
    with pytest.raises(SpecError):
        parse_input(text)


def test_sizes_follow_si_and_iec() -> None:
    assert parse_size("12GB") == 12 * 10**9
    assert parse_size("12GiB") == 12 * 2**30
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("1000B") == 1000
    assert parse_size("0", allow_zero=True) == 0
    for bad in ("0GB", "12XB", "GB", "-1GB", "0"):
        with pytest.raises(SpecError):
            parse_size(bad)


@pytest.mark.parametrize(
    "text,hint",
    [("512", "512MB, 512MiB"), ("24", "24GB, 24GiB"), ("1.5", "1.5GB, 1.5GiB"), ("1000000", "1000000B")],
)
def test_a_bare_number_is_no_size(text: str, hint: str) -> None:
    with pytest.raises(OptionError) as caught:
        parse_size(text, option="--limit")
    assert str(caught.value) == f"--limit {text}: a size needs a unit ({hint})"


def test_gpus() -> None:
    assert parse_gpu("rtx4070").bytes == 12 * 2**30
    assert parse_gpu("RTX 4090").bytes == 24 * 2**30
    assert parse_gpu("a100-80gb").bytes == 80 * 2**30
    assert parse_gpu("24GiB").bytes == 24 * 2**30
    with pytest.raises(SpecError, match="unknown GPU"):
        parse_gpu("gtx9999")


@pytest.mark.parametrize("number", ["4090", "3090", "4070"])
def test_a_model_number_is_its_rtx_preset(number: str) -> None:
    assert parse_gpu(number) == parse_gpu(f"rtx{number}") == parse_gpu(f"rtx-{number}")
    assert parse_gpu(number).name == f"rtx{number}"


def test_every_model_number_names_its_one_preset() -> None:
    numbered = {p.name: model_number(p) for p in PRESETS.values() if model_number(p) is not None}
    assert numbered, "no preset has a model number"
    for name, number in numbered.items():
        assert number is not None and name.endswith(number)
        assert parse_gpu(number).name == name


@pytest.mark.parametrize("text", ["24", "80", "10", "4", "0", "2080", "1.5", " 24 "])
def test_any_other_bare_number_is_refused(text: str) -> None:
    number = text.strip()
    with pytest.raises(OptionError) as caught:
        parse_gpu(text)
    assert str(caught.value) == (
        f"--gpu {number}: a size needs a unit ({number}GB, {number}GiB) or a preset (rtx4090, a100-40gb, ...)"
    )


@pytest.mark.parametrize(
    "text,presets",
    [
        ("a100", "a100-40gb or a100-80gb"),
        ("v100", "v100-16gb or v100-32gb"),
        ("A100", "a100-40gb or a100-80gb"),
        ("NVIDIA A100", "a100-40gb or a100-80gb"),
    ],
)
def test_a_family_of_several_presets_is_ambiguous(text: str, presets: str) -> None:
    with pytest.raises(OptionError) as caught:
        parse_gpu(text)
    assert str(caught.value) == f"--gpu {text} is ambiguous: {presets}"


def test_a_family_of_one_preset_resolves() -> None:
    assert parse_gpu("h100") == parse_gpu("h100-80gb")
    assert parse_gpu("H100").name == "h100-80gb"
    assert parse_gpu("NVIDIA A100 80GB").name == "a100-80gb"
    assert parse_gpu("GeForce RTX 4090").name == "rtx4090"


def test_headroom() -> None:
    assert parse_headroom("0").of(100) == 0
    assert parse_headroom("5%").of(1000) == 50
    assert parse_headroom("1GB").of(10**10) == 10**9
    assert parse_headroom("auto").of(10**10) > 0
    with pytest.raises(SpecError):
        parse_headroom("120%")
    assert parse_headroom("0.0").of(100) == 0


@pytest.mark.parametrize("text", ["512", "1", "0.5"])
def test_a_bare_headroom_other_than_0_is_refused(text: str) -> None:
    with pytest.raises(
        OptionError, match=rf"^--headroom {text}: a size needs a unit \({text}[GM]B, {text}[GM]iB\)"
    ):
        parse_headroom(text)


def test_targets_values_optimizers() -> None:
    assert parse_target("model.py:build").is_file
    assert not parse_target("pkg.mod:build").is_file
    with pytest.raises(SpecError):
        parse_target("model.py")
    assert parse_kv("h=1080") == ("h", 1080)
    assert parse_kv("p=0.5") == ("p", 0.5)
    assert parse_kv("flag=true") == ("flag", True)
    assert parse_kv("name=resnet") == ("name", "resnet")
    opt = parse_optimizer("sgd:momentum=0.9,nesterov=true")
    assert opt.name == "sgd" and dict(opt.kwargs) == {"momentum": 0.9, "nesterov": True}
    assert parse_optimizer("my_opt.py:Lion:lr=0.1").name == "my_opt.py:Lion"
    assert parse_optimizer("adam").kwargs == ()
    hf = parse_optimizer("hf:sgd:momentum=0.9")  # the Trainer's optim names, arguments over them
    assert hf.name == "hf:sgd" and dict(hf.kwargs) == {"momentum": 0.9} and hf.text() == "hf:sgd:momentum=0.9"
    with pytest.raises(SpecError, match="unknown Hugging Face optim 'adamw_tf'"):
        parse_optimizer("hf:adamw_tf")


def test_human_bytes() -> None:
    assert human_bytes(12 * 10**9) == "12.00 GB (11.18 GiB)"
    assert human_bytes(512) == "512 B"


@pytest.mark.parametrize(
    ("text", "expected"), [("1%", 0.01), ("0.01", 0.01), (" 5% ", 0.05), ("0", 0.0), ("0%", 0.0)]
)
def test_tolerance_takes_a_percentage_or_a_fraction(text: str, expected: float) -> None:
    assert parse_tolerance(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["1", "2.5", "-1%", "abc", "%", "nan"])
def test_tolerance_refuses_what_is_ambiguous_or_malformed(text: str) -> None:
    with pytest.raises(SpecError, match="tolerance"):
        parse_tolerance(text)
