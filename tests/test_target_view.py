"""User code sees the target GPU (target_view.py): nanoGPT's import-time autocast and dtype choice, the
`torch.cuda` questions scripts ask, values logged with `.item()`, and `torch.compile` said with its backend
and mode (`generate()` runs in full: tests/test_generate.py). The CPU case is held against the CPU
allocator."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from memtrace.tracer.core.errors import DataDependentError, MemtraceError
from memtrace.tracer.core.records import LOGGED, GpuSpec, Result
from memtrace.tracer.core.specs import parse_gpu, parse_input, parse_optimizer
from memtrace.tracer.meta.target_view import target_gpu, target_view, view_key
from memtrace.tracer.real.measure import measure_request
from memtrace.tracer.simulate import Config, Request, run

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
GPT = f"{MODELS / 'nanogpt.py'}:build"
TRAIN = MODELS / "nanogpt_train.py"
SMALL = (("layers", 2), ("hidden", 128), ("heads", 4), ("vocab", 1000), ("block_size", 128))


def _nanogpt(step: str, device: str = "cuda", gpu: str | None = "a100-40gb", seq: int = 128) -> Request:
    config = Config(
        optimizer=parse_optimizer("adamw:fused=true" if device == "cuda" else "adamw"),
        device=device,
        step=f"{TRAIN}:{step}",
    )
    inputs = (parse_input(f"4x{seq}:int64"), parse_input(f"4x{seq}:int64"))
    return Request(GPT, inputs, SMALL, config, parse_gpu(gpu) if gpu else None)


def _quiet_run(request: Request) -> Result:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # PyTorch's "CUDA is not available, disabling autocast"
        return run(request)


def test_module_level_autocast_is_the_targets() -> None:
    at_import = _quiet_run(_nanogpt("step"))
    inside = _quiet_run(_nanogpt("step_ctx_inside"))
    fp32 = _quiet_run(_nanogpt("step_fp32"))
    assert at_import.peak.bytes == inside.peak.bytes
    assert at_import.cuda is not None and inside.cuda is not None
    assert at_import.cuda.reserved_peak_bytes == inside.cuda.reserved_peak_bytes
    assert fp32.peak.bytes > at_import.peak.bytes  # bf16 activations and logits: the autocast took effect
    assert any("answered for a100-40gb (sm80)" in n and "is_bf16_supported" in n for n in at_import.notes)


def test_an_architecture_without_native_bf16_is_told_so() -> None:
    t4 = target_gpu("cuda", GpuSpec("t4", 16 * 2**30), "7.5")
    assert t4 is not None
    real = torch.cuda.is_available()
    with target_view(t4):
        assert torch.cuda.is_available() and torch.cuda.get_device_capability() == (7, 5)
        assert not torch.cuda.is_bf16_supported(including_emulation=False)
        assert torch.cuda.get_device_properties(0).total_memory == 16 * 2**30
        with pytest.raises(MemtraceError, match="multi_processor_count"):
            _ = torch.cuda.get_device_properties(0).multi_processor_count
        assert view_key() == (t4.name, 7, 5, 16 * 2**30)
    assert torch.cuda.is_available() is real  # this machine again
    assert view_key() is None


def test_no_gpu_answers_the_default_architecture() -> None:
    default = target_gpu("cuda", None, None)
    assert default is not None and (default.major, default.minor) == (8, 0) and "assumed" in default.label
    assert target_gpu("cpu", parse_gpu("rtx4090"), None) is None


def test_cpu_target_sees_no_gpu_and_matches_the_allocator() -> None:
    request = _nanogpt("step", device="cpu", gpu=None, seq=64)
    simulated = _quiet_run(request)
    assert any("as on a machine with no GPU" in n for n in simulated.notes)
    measured = measure_request(request)
    assert simulated.peak.bytes == measured.peak


def test_logged_values_are_placeholders(tmp_path: Path) -> None:
    step = tmp_path / "logstep.py"
    step.write_text(
        textwrap.dedent(
            """
            def step(model, batch, optimizer):
                loss = model(*batch).float().pow(2).mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                print(f"{loss.item():.3f} {float(loss):.3f} {loss.detach().cpu().tolist()}")

            def step_int(model, batch, optimizer):
                return int(model(*batch).argmax())
            """
        )
    )
    lin = f"{MODELS / 'seed_cnn.py'}:build"
    request = Request(
        lin,
        (parse_input("1x3x32x32"),),
        (("h", 32), ("w", 32)),
        Config(device="cpu", step=f"{step}:step"),
    )
    result = run(request)
    logged = [a for a in result.assumptions if a.source == LOGGED]
    assert {a.op for a in logged} == {".item() (logged)", ".cpu() / .tolist() (logged)"}
    assert all(a.module.endswith("logstep.py:7") for a in logged)
    with pytest.raises(DataDependentError, match=r"logstep\.py:10: \.item\(\).*an integer.*--assume item="):
        run(
            Request(
                lin, request.inputs, request.builder_kwargs, Config(device="cpu", step=f"{step}:step_int")
            )
        )


def test_compile_is_said_with_its_backend_and_mode(tmp_path: Path) -> None:
    """A builder's `torch.compile(model)` is simulated as compiled (tests/test_compile.py holds the figures
    against the real compiled step); the report says what was compiled, with what, and how long it took."""
    builder = tmp_path / "compiled.py"
    builder.write_text(
        textwrap.dedent(
            """
            import torch
            def build(compiled=True):
                model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 8))
                return torch.compile(model, backend="eager") if compiled else model
            """
        )
    )
    inputs = (parse_input("16x64"),)
    compiled = run(Request(f"{builder}:build", inputs, (("compiled", True),)))
    eager = run(Request(f"{builder}:build", inputs, (("compiled", False),)))
    assert compiled.peak.bytes == eager.peak.bytes  # Dynamo's graph run op by op: the eager ops
    note = next(n for n in compiled.notes if n.startswith("torch.compile: "))
    assert "Sequential with eager (mode default); 1 graph(s) compiled in" in note
    assert not any("torch.compile" in n for n in eager.notes)
