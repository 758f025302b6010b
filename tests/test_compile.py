"""Compiled steps (issue 23, tracer/meta/compiled.py): `torch.compile` in the builder, in the step, as a
decorator, `Module.compile()`, `--compile`; inductor's CPU buffer plan run on meta, held against the same step
compiled for real with inductor's C++ backend under the CPU allocator. Compiling costs seconds to a minute a
case on 2 cores: the cases are small, share one inductor cache (TORCHINDUCTOR_CACHE_DIR, set before torch
compiles anything), and are marked slow."""

from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
from test_cli import run as cli

from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.real.measure import Measured, measure_request
from memtrace.tracer.simulate import request, run

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="memtrace-inductor-"))

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
SMALL_GPT = {"layers": 2, "hidden": 128, "heads": 4, "vocab": 1000, "block_size": 128}

CODE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def mlp(compiled=True):
        model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.GELU(),
                              nn.Linear(1024, 10))
        return torch.compile(model) if compiled else model

    def cnn():
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    class Broken(nn.Module):
        '''Two compiled pieces around a graph break, eager code between them.'''
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Linear(128, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU())
            self.b = nn.Sequential(nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 10))
        def forward(self, x):
            h = self.a(x)
            torch._dynamo.graph_break()
            h = torch.tanh(h) * 2
            return self.b(h)

    def broken():
        return torch.compile(Broken())

    def plain():
        return cnn()

    def deep_mlp():
        layers = []
        for _ in range(4):
            layers += [nn.Linear(256, 256), nn.GELU()]
        return torch.compile(nn.Sequential(*layers, nn.Linear(256, 10)))

    def deep_mlp_on_a_budget():
        '''The user's own partitioner setting: keep at most a tenth of the activations, recompute the rest.'''
        torch._functorch.config.activation_memory_budget = 0.1
        return deep_mlp()

    @torch.compile
    def loss_of(out):
        return torch.nn.functional.log_softmax(out, dim=-1).mean().neg()

    def seq_mlp():
        return torch.compile(nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64)))

    def two_lengths(model, batch, optimizer):
        '''A loop over sequence lengths: the second one recompiles with dynamic sizes, the third reuses that
        graph (its buffers sized by the length it is called with).'''
        (x,) = batch
        for n in (x.shape[1] // 4, x.shape[1] // 2, x.shape[1]):
            model(x[:, :n].contiguous()).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def step_compiles_inside(model, batch, optimizer):
        '''The user's step compiles the model itself, and its loss is a compiled function.'''
        compiled = torch.compile(model)
        (x,) = batch
        loss_of(compiled(x)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    """
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compiled") / "compiled_models.py"
    path.write_text(CODE)
    return path


def _held(req: Any) -> tuple[int, int, tuple[str, ...]]:
    result = run(req)
    measured = measure_request(req)
    assert isinstance(measured, Measured)
    return result.peak_bytes, measured.peak, result.notes


def _compiled_note(notes: tuple[str, ...]) -> str:
    found = [n for n in notes if n.startswith("torch.compile: ")]
    assert len(found) == 1, notes
    return found[0]


@pytest.mark.slow
def test_a_compiled_cnn_with_batch_norm_against_the_cpu_allocator(models: Path) -> None:
    """--compile (the whole model, as the Trainer's torch_compile): inductor fuses batch norm and ReLU, and
    the compiled step peaks far below the eager one; the simulation holds it to 1%."""
    compiled = request(f"{models}:cnn", ("8x3x64x64",), device="cpu", compile_model=True)
    sim, real, notes = _held(compiled)
    assert sim == pytest.approx(real, rel=0.01)
    eager = run(request(f"{models}:cnn", ("8x3x64x64",), device="cpu"))
    assert real < 0.9 * eager.peak_bytes  # compiling changed the figure: the eager one would be wrong
    assert "Sequential with inductor (mode default)" in _compiled_note(notes)


@pytest.mark.slow
def test_a_compiled_nanogpt_with_its_own_cross_entropy(models: Path) -> None:
    req = request(
        f"{MODELS / 'nanogpt.py'}:build",
        ("4x64:int64", "4x64:int64"),
        args=SMALL_GPT,
        optimizer="adamw",
        device="cpu",
        compile_model=True,
    )
    sim, real, notes = _held(req)
    assert sim == pytest.approx(real, rel=0.01)
    assert "GPT with inductor" in _compiled_note(notes)


@pytest.mark.slow
def test_a_compiled_hf_gpt2_moving_its_position_embeddings_to_the_input_device() -> None:
    """HF GPT-2 adds `position_embeds.to(inputs_embeds.device)`: Dynamo's graph names the meta device as a
    positional argument, which inductor must plan as the CPU (it failed: BackendCompilerFailed, device
    mismatch cpu and meta)."""
    pytest.importorskip("transformers")
    req = request(
        f"{MODELS / 'hf_gpt2.py'}:build", ("2x64:int64",), optimizer="adamw", device="cpu", compile_model=True
    )
    sim, real, notes = _held(req)
    assert sim == pytest.approx(real, rel=0.01)
    assert "GPT2LMHeadModel with inductor" in _compiled_note(notes)


SMALL_LLAMA = {"layers": 2, "hidden": 128, "heads": 4, "kv_heads": 2, "intermediate": 344, "vocab": 512}


@pytest.mark.slow
def test_a_compiled_hf_llama_keeps_tracings_causal_mask_and_repeated_key_value() -> None:
    """Inside a compiled region transformers answers its data-dependent checks as tracing does (a packed-
    sequence mask kept, the causal mask materialised, key and value repeated to the query heads), in the
    real run as in the simulation: memtrace's own answers for meta tensors are for eager code only (with
    them, the 2x1024 bf16 fused-AdamW case was 4.13% low)."""
    pytest.importorskip("transformers")
    req = request(
        f"{MODELS / 'hf_llama.py'}:build",
        ("input_ids=2x256:int64",),
        args=SMALL_LLAMA,
        amp="bf16",
        optimizer="hf:adamw_torch_fused",
        device="cpu",
        compile_model=True,
    )
    sim, real, notes = _held(req)
    assert sim == pytest.approx(real, rel=0.01)
    assert "LlamaForCausalLM with inductor" in _compiled_note(notes)


@pytest.mark.slow
def test_a_builder_returning_a_compiled_mlp_for_training_and_inference(models: Path) -> None:
    for mode in ("train", "infer"):
        sim, real, notes = _held(request(f"{models}:mlp", ("64x256",), device="cpu", mode=mode))
        assert sim == pytest.approx(real, rel=0.01), mode
        assert "1 graph(s) compiled" in _compiled_note(notes)


@pytest.mark.slow
def test_a_graph_break_compiles_two_pieces_with_eager_code_between(models: Path) -> None:
    sim, real, notes = _held(request(f"{models}:broken", ("32x128",), device="cpu"))
    assert sim == pytest.approx(real, rel=0.01)
    assert "2 graph(s) compiled" in _compiled_note(notes)


@pytest.mark.slow
def test_a_step_that_compiles_inside(models: Path) -> None:
    req = request(f"{models}:plain", ("8x3x32x32",), device="cpu", step=f"{models}:step_compiles_inside")
    sim, real, notes = _held(req)
    assert sim == pytest.approx(real, rel=0.01)
    note = _compiled_note(notes)
    assert "Sequential with inductor" in note and "loss_of() with inductor" in note


@pytest.mark.slow
def test_a_recompilation_on_new_shapes_is_counted_once_and_said(models: Path) -> None:
    """Three lengths, two graphs, as the real compiled run: the recompiled graph has symbolic sizes, and
    inductor plans its buffers for them, so the longest length, run by the graph compiled for the middle
    one, holds buffers of its own length (a plan for the example's sizes held -20% here)."""
    from torch._dynamo.utils import counters

    req = request(f"{models}:seq_mlp", ("4x32x64",), device="cpu", step=f"{models}:two_lengths")
    result = run(req)
    counters.clear()
    measured = measure_request(req)
    assert isinstance(measured, Measured)
    assert result.peak_bytes == pytest.approx(measured.peak, rel=0.01)
    real_graphs = counters["stats"]["unique_graphs"]
    note = _compiled_note(result.notes)
    said = "graph(s) compiled (1 recompilation on new shapes: Sequential 4x8x64 then 4x16x64"
    assert f"{real_graphs} {said}" in note
    assert "dynamic sizes 4xs" in note


@pytest.mark.slow
def test_the_users_activation_memory_budget_holds(models: Path) -> None:
    """`torch._functorch.config.activation_memory_budget` set by the user's code: AOTAutograd's partitioner
    saves less and recomputes in backward, in the simulation as in the real compiled run."""
    import torch

    try:
        sim, real, _ = _held(request(f"{models}:deep_mlp_on_a_budget", ("4096x256",), device="cpu"))
    finally:
        torch._functorch.config.activation_memory_budget = 1.0
    assert sim == pytest.approx(real, rel=0.01)
    full = run(request(f"{models}:deep_mlp", ("4096x256",), device="cpu")).peak_bytes
    assert sim < full  # the budget changed what is saved: a figure that ignored it would be the same


@pytest.mark.slow
def test_aot_eager_and_eager_backends(models: Path) -> None:
    for backend in ("aot_eager", "eager"):
        req = request(f"{models}:cnn", ("4x3x32x32",), device="cpu", compile_backend=backend)
        sim, real, notes = _held(req)
        assert sim == pytest.approx(real, rel=0.01), backend
        assert f"with {backend} (mode default)" in _compiled_note(notes)


def test_cuda_graphs_and_autotuning_are_refused_in_one_line(
    models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(MemtraceError, match="reduce-overhead on cuda: CUDA graphs' private memory pool"):
        run(request(f"{models}:cnn", ("2x3x16x16",), device="cuda", compile_mode="reduce-overhead"))
    with pytest.raises(MemtraceError, match="max-autotune: not simulated"):
        run(request(f"{models}:cnn", ("2x3x16x16",), device="cpu", compile_mode="max-autotune"))
    code, out, err = cli(capsys, f"{models}:cnn", "--input", "2x3x16x16", "--compile-mode", "reduce-overhead")
    assert code == 2 and "CUDA graphs' private memory pool is not modelled" in out + err
    assert "Traceback" not in out + err


def test_the_flags_and_what_they_imply(tmp_path: Path) -> None:
    """--compile-mode and --compile-backend imply --compile; an unknown backend in user code is one line."""
    from memtrace.tracer.meta.compiled import CompileOptions, compile_options

    assert compile_options(False, None, None) is None
    assert compile_options(True, None, None) == CompileOptions("inductor", "default")
    assert compile_options(False, "reduce-overhead", None) == CompileOptions("inductor", "reduce-overhead")
    assert compile_options(False, None, "aot_eager") == CompileOptions("aot_eager", "default")
    req = request(f"{MODELS / 'conv_bn.py'}:build", ("2x3x16x16",), device="cpu", compile_backend="eager")
    assert req.config.recipe.compile == CompileOptions("eager", "default")
    assert "compiled (eager, mode default)" in req.config.recipe.text()
    builder = tmp_path / "odd.py"
    builder.write_text(
        "import torch\ndef build():\n    return torch.compile(torch.nn.Linear(4, 4), backend='tvm')\n"
    )
    with pytest.raises(MemtraceError, match=r"torch.compile\(backend='tvm'\): memtrace simulates inductor"):
        run(request(f"{builder}:build", ("2x4",), device="cpu"))


def test_the_cuda_range_of_a_compiled_step_has_its_ends_in_order() -> None:
    """The range logic on two results whose peaks stand for the compiled and the eager step, either way round
    (compiling can raise a peak as well as lower it)."""
    from dataclasses import replace

    from memtrace.tracer.analysis.compiled_range import with_compiled_range

    base = run(request(f"{MODELS / 'conv_bn.py'}:build", ("2x3x16x16",), device="cuda"))
    assert base.cuda is not None
    for compiled_bytes, eager_bytes in ((1000, 3000), (3000, 1000)):
        compiled = replace(base, peak=replace(base.peak, bytes=compiled_bytes))
        eager = replace(base, peak=replace(base.peak, bytes=eager_bytes))
        ranged = with_compiled_range(compiled, eager, None, None)
        assert ranged.cuda is not None and ranged.cuda.compiled_range is not None
        ends = ranged.cuda.compiled_range
        assert (ends["low_bytes"], ends["high_bytes"]) == (1000, 3000)
        assert (ends["compiled_bytes"], ends["eager_bytes"]) == (compiled_bytes, eager_bytes)
        assert ranged.peak_bytes == compiled_bytes  # the report's figure stays the compiled plan's
        assert "lies between 1,000 and 3,000 bytes allocated" in ranged.notes[-1]
        assert ranged.to_json()["cuda"]["compiled_range"] == ends
    cpu = run(request(f"{MODELS / 'conv_bn.py'}:build", ("2x3x16x16",), device="cpu"))
    assert with_compiled_range(cpu, cpu, None, None) is cpu  # no allocator modelled, no range


@pytest.mark.slow
def test_a_compiled_step_on_cuda_is_given_as_a_range_to_its_eager_step(models: Path) -> None:
    """On a CUDA target inductor's CPU plan is one end and the eager step, placed for the same GPU, the
    other: both figures are the simulation's own, each checked against a run of its own."""
    compiled = run(request(f"{models}:cnn", ("4x3x32x32",), device="cuda", compile_model=True))
    eager = run(request(f"{models}:cnn", ("4x3x32x32",), device="cuda"))
    assert compiled.cuda is not None and eager.cuda is not None
    ends = compiled.cuda.compiled_range
    assert ends is not None
    assert ends["compiled_bytes"] == compiled.peak_bytes and ends["eager_bytes"] == eager.peak_bytes
    assert ends["eager_reserved_bytes"] == eager.cuda.reserved_peak_bytes
    assert ends["low_bytes"] == min(compiled.peak_bytes, eager.peak_bytes) < ends["high_bytes"]
    assert any(n.startswith("torch.compile on cuda: inductor's CUDA kernels") for n in compiled.notes)
    assert eager.cuda.compiled_range is None
    cpu = run(request(f"{models}:cnn", ("4x3x32x32",), device="cpu", compile_model=True))
    assert cpu.cuda is None and not any("on cuda" in n for n in cpu.notes)


@pytest.mark.slow
def test_a_compiled_regions_buffers_are_filed_under_the_layers_that_made_them(models: Path) -> None:
    """--layers on a compiled model: inductor's buffers go to the module of the op whose value each holds
    (its origins' nn_module_stack), in forward and backward, not to the compiled module as a whole; the
    layers still add up to the peak. Batch norm fused into its ReLU is one buffer: the ReLU's."""
    result = run(request(f"{models}:cnn", ("4x3x32x32",), device="cpu", compile_model=True))
    rows = {m.name: m for m in result.modules}
    assert sum(m.peak_bytes for m in result.modules) == result.peak_bytes
    assert rows[""].peak_bytes < 0.05 * result.peak_bytes  # the compiled module's own: little left
    relu, batch_norm = rows["2"], rows["1"]
    assert relu.type == "ReLU" and relu.activation_bytes == 4 * 32 * 32 * 32 * 4  # the fused kernel's output
    assert batch_norm.activation_bytes < relu.activation_bytes  # its normalised output never exists
    backward_only = [
        m for m in result.modules if m.peak_bytes > 0 and m.activation_bytes == 0 and m.type == "ReLU"
    ]
    assert backward_only  # a ReLU's gradient buffer, made in the compiled backward, is the ReLU's
