"""bitsandbytes on the target: 4-bit weights quantized on meta as `.to(device)` leaves them, QLoRA steps
(nf4 and fp4, double quantization, gradient checkpointing) and 8-bit AdamW held against the CPU allocator
on bitsandbytes' CPU backend, and a quantization that cannot run refused in one line."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from test_cli import run

from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.core.specs import parse_input, parse_optimizer
from memtrace.tracer.meta.compat_bnb import held_tensors, quantize_on_meta
from memtrace.tracer.real.measure import measure_request
from memtrace.tracer.simulate import Config, Request, run_recorded

bnb = pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")
pytest.importorskip("transformers")

QLORA = f"{Path(__file__).resolve().parents[1] / 'benchmarks' / 'models' / 'hf_qlora.py'}:build"


def _held(module: torch.nn.Module) -> list[tuple[tuple[int, ...], torch.dtype]]:
    weight = [(tuple(module.weight.shape), module.weight.dtype)]
    return weight + [(tuple(t.shape), t.dtype) for t, _ in held_tensors(module)]


@pytest.mark.parametrize(("quant", "nested"), [("nf4", False), ("fp4", False), ("nf4", True), ("fp4", True)])
def test_meta_quantization_leaves_the_storages_a_real_one_does(quant: str, nested: bool) -> None:
    def layer() -> Any:
        return bnb.nn.Linear4bit(320, 192, bias=False, quant_type=quant, compress_statistics=nested)

    real = layer().to("cpu")
    with torch.device("meta"):
        meta = layer()
    cache = dict(bnb.functional.name2qmap)
    notes = quantize_on_meta(meta)
    assert meta.weight.device.type == "meta" and notes
    assert _held(meta) == _held(real)
    assert dict(bnb.functional.name2qmap).keys() == cache.keys()  # bitsandbytes' table cache untouched
    assert all(t.device.type != "meta" for t in bnb.functional.name2qmap.values())


def test_a_scripted_submodule_is_left_alone_once_bitsandbytes_is_imported() -> None:
    """TorchScript keeps its parameters in a wrapper without `.get`: the quantization pass skips it."""
    model = torch.nn.Sequential(torch.jit.script(torch.nn.Linear(8, 8)), torch.nn.ReLU())
    assert quantize_on_meta(model.to("meta")) == []


def test_meta_int8_quantization_leaves_the_storages_a_real_one_does() -> None:
    def layer() -> Any:
        return bnb.nn.Linear8bitLt(320, 192, bias=False, has_fp16_weights=False)

    real = layer().to("cpu")
    with torch.device("meta"):
        meta = layer()
    quantize_on_meta(meta)
    assert _held(meta) == _held(real) and meta.weight.dtype == torch.int8


def _request(optimizer: str = "adamw", **builder: Any) -> Request:
    config = Config(optimizer=parse_optimizer(optimizer), device="cpu")
    return Request(QLORA, (parse_input("input_ids=2x64:int64"),), tuple(builder.items()), config)


def _held_against_the_allocator(request: Request) -> tuple[int, int]:
    simulated = run_recorded(request).result.peak.bytes
    measured = measure_request(request)
    assert abs(simulated - measured.peak) <= 0.01 * measured.peak, (simulated, measured.peak)
    return simulated, measured.peak


@pytest.mark.parametrize(
    "builder",
    [
        {"quant": "nf4"},
        {"quant": "fp4", "double_quant": True},
        {"quant": "nf4", "double_quant": True, "checkpointing": True},
        {"quant": "fp4", "checkpointing": True, "reentrant": True},
        {"quant": "int8"},
        {"quant": "nf4", "dora": True, "device": "cpu"},  # moved (quantized) before DoRA reads the weight
    ],
    ids=["nf4", "fp4-double", "nf4-double-checkpointed", "fp4-checkpointed-reentrant", "llm-int8", "qdora"],
)
def test_qlora_step_matches_the_cpu_allocator(builder: dict[str, Any]) -> None:
    _held_against_the_allocator(_request(**builder))


def test_adamw8bit_keeps_8bit_state_for_large_tensors_and_matches() -> None:
    request = _request("bitsandbytes.optim:AdamW8bit", rank=32)  # 32x256 adapters: 8-bit, norms: fp32
    eight, _ = _held_against_the_allocator(request)
    fp32 = run_recorded(_request("adamw", rank=32)).result.peak.bytes
    assert eight < fp32


def test_from_pretrained_with_a_quantization_config_matches(tmp_path: Path) -> None:
    from memtrace.tracer.engine.loader import load_object

    llama = load_object(f"{QLORA.rsplit('/', 1)[0]}/hf_llama.py:build")
    llama(layers=2, hidden=256, heads=4, kv_heads=2, intermediate=688, vocab=1024).save_pretrained(
        tmp_path / "llama"
    )
    builder = tmp_path / "pretrained.py"
    builder.write_text(
        textwrap.dedent(
            f"""
            import torch
            from transformers import AutoModelForCausalLM, BitsAndBytesConfig

            def build():
                config = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
                )
                return AutoModelForCausalLM.from_pretrained(
                    {str(tmp_path / "llama")!r},
                    quantization_config=config,
                    dtype=torch.bfloat16,
                    device_map="cpu",
                )
            """
        )
    )
    config = Config(optimizer=parse_optimizer("adamw"), device="cpu")
    request = Request(f"{builder}:build", (parse_input("input_ids=2x64:int64"),), (), config)
    _held_against_the_allocator(request)


def test_cuda_gemm_4bit_buffers_follow_bitsandbytes_source() -> None:
    from memtrace.tracer.devices.cuda import bnb as cuda_bnb

    n, k, blocks = 512, 256, 512 * 256 // 64
    packed = torch.empty(n * k // 2, 1, dtype=torch.uint8, device="meta")
    absmax8 = torch.empty(blocks, dtype=torch.uint8, device="meta")
    absmax2 = torch.empty(blocks // 256, device="meta")
    nested = {"absmax_8bit": absmax8, "absmax_code": torch.empty(256, device="meta")}

    def steps(rows: int, **kw: Any) -> list[tuple[str, int]] | None:
        a = torch.empty(rows, k, dtype=torch.bfloat16, device="meta")
        out = torch.empty(rows, n, dtype=torch.bfloat16, device="meta")
        ws = cuda_bnb.gemm_4bit((a, packed, [n, k], absmax2, 64, "nf4"), kw, out)
        return None if ws is None else [(s.kind, s.nbytes) for s in ws.steps if s.kind != "persist"]

    assert steps(4) is None  # the fused kernel: its output alone
    weight = ("alloc", n * k * 2)  # dequantized in the compute dtype
    assert steps(2048) == [weight, ("output", 0)]
    assert steps(2048, **nested) == [("alloc", blocks * 4), ("alloc", blocks * 4), weight, ("output", 0)]


def test_cuda_int8_scaled_mm_buffers_follow_bitsandbytes_source() -> None:
    from memtrace.tracer.devices.cuda import bnb as cuda_bnb

    def steps(dtype: torch.dtype) -> list[tuple[str, int]]:
        out = torch.empty(128, 96, dtype=dtype, device="meta")
        ws = cuda_bnb.int8_scaled_mm((), {}, out)
        assert ws is not None
        return [(s.kind, s.nbytes) for s in ws.steps]

    cells = 128 * 96
    assert steps(torch.float16) == [("alloc", cells * 4), ("output", 0)]
    assert steps(torch.bfloat16) == [("alloc", cells * 4), ("alloc", cells * 2), ("output", 0), ("free", 0)]


def test_a_quantization_that_cannot_run_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    builder = tmp_path / "bad_quant.py"
    builder.write_text(
        textwrap.dedent(
            """
            import bitsandbytes as bnb
            from torch import nn

            def build():
                return nn.Sequential(bnb.nn.Linear4bit(64, 64, quant_type="int3"))
            """
        )
    )
    code, _, err = run(capsys, f"{builder}:build", "--input", "2x64", "--device", "cpu")
    assert code == 2 and "bitsandbytes could not quantize" in err and len(err.strip().splitlines()) == 1


def test_llm_int8_outliers_on_cuda_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--arg", "quant=int8", "--input", "input_ids=2x64:int64", "--device", "cuda", "--gpu", "rtx4090")
    code, _, err = run(capsys, QLORA, *args)
    errors = [
        line for line in err.splitlines() if line.startswith("memtrace: error")
    ]  # not transformers' warnings
    assert code == 2 and len(errors) == 1 and "llm_int8_threshold=6.0 on cuda" in errors[0]
    assert "Traceback" not in err


def test_quantize_on_meta_refuses_in_a_memtrace_error() -> None:
    with torch.device("meta"):
        layer = bnb.nn.Linear4bit(64, 64, quant_type="int3")
    with pytest.raises(MemtraceError, match="Params4bit of shape"):
        quantize_on_meta(layer)


def test_bitsandbytes_imported_first_under_a_cuda_target_loads_this_machines_kernels() -> None:
    """A fresh process whose builder imports bitsandbytes while torch.cuda answers for the target GPU:
    bitsandbytes is told this machine's truth (its CUDA backend needs a CUDA build of torch to import),
    through every wrapper the target view stacks on `is_available`."""
    import subprocess
    import sys

    cli = (sys.executable, "-c", "from memtrace.cli.main import main; main()")
    done = subprocess.run(
        [*cli, QLORA, "--input", "input_ids=1x16:int64", "--gpu", "rtx4090"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Peak allocated" in done.stdout
