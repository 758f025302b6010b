"""Hugging Face's `optim` names (`--optimizer hf:NAME`) as the Trainer maps them, Adafactor (PyTorch's and
transformers') and bitsandbytes' paged optimizers: each that runs on the CPU held against the CPU allocator
(bitsandbytes' paged state is ordinary there, as bitsandbytes falls back); on CUDA the paged state is CUDA
unified memory, filed apart from allocated and reserved (`cuda.managed_bytes`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_cli import run

from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.core.hf_optim import HF_OPTIMIZERS
from memtrace.tracer.core.records import Category
from memtrace.tracer.core.specs import parse_input, parse_optimizer
from memtrace.tracer.engine.program import make_optimizer
from memtrace.tracer.real.measure import measure_request
from memtrace.tracer.simulate import Config, Request, run_recorded

pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

QLORA = f"{Path(__file__).resolve().parents[1] / 'benchmarks' / 'models' / 'hf_qlora.py'}:build"
CPU_RUNS = [
    "hf:adamw_torch",
    "hf:adamw_torch_fused",
    "hf:adamw_bnb_8bit",
    "hf:paged_adamw_8bit",
    "hf:paged_adamw_32bit",
    "hf:adafactor",
    "hf:sgd",
    "hf:adagrad",
    "hf:rmsprop",
    "hf:lion_8bit",
    "hf:paged_lion_32bit",
    "adafactor",  # PyTorch's own
]


def _request(optimizer: str, device: str = "cpu", **builder: Any) -> Request:
    config = Config(optimizer=parse_optimizer(optimizer), device=device)
    return Request(QLORA, (parse_input("input_ids=2x64:int64"),), tuple(builder.items()), config)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", CPU_RUNS)
def test_hf_optimizers_match_the_cpu_allocator(optimizer: str) -> None:
    request = _request(optimizer, rank=32)  # 32x256 adapters: 8-bit state where the name says so
    result = run_recorded(request).result
    simulated, measured = result.peak.bytes, measure_request(request).peak
    assert abs(simulated - measured) <= 0.01 * measured, (simulated, measured)
    if optimizer == "adafactor":  # its norms' .item() scale the update: read where the optimizer reads them
        where = [a.module for a in result.assumptions]
        assert any(w.startswith("the optimizer step (torch/optim/_adafactor") for w in where), where


def test_the_trainers_mapping_and_defaults() -> None:
    params = [torch.nn.Parameter(torch.empty(64, 64, device="meta"))]

    def made(name: str, device: str = "cpu") -> Any:
        optimizer = make_optimizer(parse_optimizer(name), params, device)
        assert optimizer is not None
        return optimizer

    adafactor = made("hf:adafactor")
    assert type(adafactor) is transformers.optimization.Adafactor
    assert adafactor.defaults["lr"] == 5e-5 and not adafactor.defaults["scale_parameter"]
    assert not adafactor.defaults["relative_step"]
    assert type(made("adafactor")) is torch.optim.Adafactor  # a bare name keeps its torch.optim meaning
    assert made("hf:adamw_torch_fused").defaults["fused"] is True
    assert made("hf:adamw_torch", "cuda").defaults["foreach"] is True  # PyTorch's own choice on CUDA
    paged = made("hf:paged_adamw_8bit")
    assert paged.is_paged and paged.args.optim_bits == 8 and paged.defaults["lr"] == 5e-5
    assert made("hf:sgd:momentum=0.9").defaults["momentum"] == 0.9  # the user's arguments over the Trainer's


def test_every_name_is_the_trainers() -> None:
    names = {str(n.value) for n in transformers.training_args.OptimizerNames}
    assert set(HF_OPTIMIZERS) <= names


def test_an_unknown_hf_name_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, QLORA, "--input", "input_ids=2x64:int64", "--optimizer", "hf:adamw_tensorflow")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "'adamw_tensorflow'" in err and "paged_adamw_8bit" in err and "adafactor" in err
    with pytest.raises(MemtraceError):
        parse_optimizer("hf:nope")


def test_paged_state_on_cuda_is_managed_memory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """256-rank adapters on 512 wide layers: 131,072 elements, over bitsandbytes' 1e5 paging floor."""
    builder = {"hidden": 512, "intermediate": 1376, "rank": 256}
    paged = run_recorded(_request("hf:paged_adamw_32bit", "cuda", **builder)).result
    plain = run_recorded(_request("bitsandbytes.optim:AdamW:optim_bits=32", "cuda", **builder)).result
    assert paged.cuda is not None and plain.cuda is not None
    moved = plain.totals[Category.OPTIMIZER_STATE] - paged.totals[Category.OPTIMIZER_STATE]
    assert paged.cuda.managed_bytes == moved > 0
    assert paged.cuda.allocated_peak_bytes < plain.cuda.allocated_peak_bytes
    assert plain.cuda.managed_bytes == 0
    out = tmp_path / "paged.json"
    args = ("--input", "input_ids=2x64:int64", "--optimizer", "hf:paged_adamw_32bit", "--output", str(out))
    sizes = [a for k, v in builder.items() for a in ("--arg", f"{k}={v}")]
    code, text, err = run(capsys, QLORA, *sizes, *args)
    assert code == 0, err
    assert json.loads(out.read_text())["cuda"]["managed_bytes"] == paged.cuda.managed_bytes
    assert "paged optimizer state in CUDA unified memory" in text


def test_paged_on_the_cpu_target_is_ordinary() -> None:
    builder = {"hidden": 512, "intermediate": 1376, "rank": 256}
    res = run_recorded(_request("hf:paged_adamw_32bit", "cpu", **builder)).result
    plain = run_recorded(_request("bitsandbytes.optim:AdamW:optim_bits=32", "cpu", **builder)).result
    assert res.peak.bytes == plain.peak.bytes and res.cuda is None
