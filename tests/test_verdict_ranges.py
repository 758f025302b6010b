"""Every stated range widens the verdict (issue 24 item 4): a cuDNN convolution shape the table did not
measure, cuDNN's RNN reserve and workspace (item 2, tracer/devices/cuda/rnn.py) and inductor's CUDA plan.
"Fits" only when the spare covers each range's upper end, "borderline" when only the simulated figure fits.
No GPU: the cuDNN sizes are synthetic or stated bounds; what is tested is the structure and the judgement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from test_cudnn_table import _cnn, _measured_cnn
from torch import nn

from memtrace.tracer.analysis.compiled_range import INDUCTOR_CUDA_PLAN
from memtrace.tracer.core.records import (
    BORDERLINE,
    CUDNN_WORKSPACE,
    DOES_NOT_FIT,
    FITS,
    GpuSpec,
    Kind,
    Phase,
    Result,
)
from memtrace.tracer.core.specs import human_bytes, parse_input
from memtrace.tracer.devices.cuda import conv
from memtrace.tracer.devices.cuda import rnn as cuda_rnn
from memtrace.tracer.outputs.report import cuda_lines, verdict_line
from memtrace.tracer.simulate import Config, Request, run_traced, simulate

MIB = 2**20


def _text(result: Result) -> str:
    console = Console(width=1000, record=True)
    console.print(verdict_line(result))
    assert result.cuda is not None
    console.print(cuda_lines(result.cuda))
    return console.export_text()


def _gpu(result: Result, spare: int) -> GpuSpec:
    """A GPU whose budget (no headroom) leaves `spare` bytes beside the reserved peak."""
    return GpuSpec("t", result.fit_bytes + spare)


# --------------------------------------------------------------------------- cuDNN convolution table


def test_an_unmeasured_shape_straddling_the_gpu_is_borderline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch 4 was not measured: its workspace is a range from the batch-2 calls; a GPU whose spare lies
    inside that range is borderline, one whose spare covers its upper end fits."""
    monkeypatch.setattr(conv, "_LOADED", [_measured_cnn(64 * MIB)])
    base = simulate(_cnn, ["4x3x32x32"], device="cuda")
    assert base.cuda is not None and base.cuda.cudnn_workspace_estimate is not None
    high = base.cuda.cudnn_workspace_estimate["high_bytes"]
    assert high >= 64 * MIB > base.peak_bytes  # the range straddles: not placed, far above the figure
    inside = simulate(_cnn, ["4x3x32x32"], device="cuda", gpu=_gpu(base, high // 2), headroom="0")
    assert inside.verdict is not None and inside.verdict.status == BORDERLINE
    assert inside.verdict.uncertain_reasons == (CUDNN_WORKSPACE,) and inside.verdict.uncertain_bytes == high
    roomy = simulate(_cnn, ["4x3x32x32"], device="cuda", gpu=_gpu(base, high), headroom="0")
    assert roomy.verdict is not None and roomy.verdict.status == FITS


def test_a_measured_shape_gives_the_exact_figures_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch 2 was measured: its 64 MiB workspace is placed, nothing is stated, and the verdict is the
    exact figure's: fits with no byte to spare, does not fit one byte short."""
    monkeypatch.setattr(conv, "_LOADED", [_measured_cnn(64 * MIB)])
    base = simulate(_cnn, ["2x3x32x32"], device="cuda")
    assert base.cuda is not None and base.cuda.cudnn_workspace_estimate is None and base.cuda.ranges == ()
    assert base.cuda.reserved_peak_bytes >= 64 * MIB
    exact = simulate(_cnn, ["2x3x32x32"], device="cuda", gpu=_gpu(base, 0), headroom="0")
    assert exact.verdict is not None and exact.verdict.status == FITS and exact.verdict.uncertain_bytes == 0
    short = simulate(_cnn, ["2x3x32x32"], device="cuda", gpu=_gpu(base, -1), headroom="0")
    assert short.verdict is not None and short.verdict.status == DOES_NOT_FIT


def test_a_result_without_ranges_saves_as_before() -> None:
    """No `ranges` key in the cuda JSON when nothing was stated (saved results and goldens unchanged)."""
    res = simulate(lambda: nn.Linear(64, 64), ["8x64"], device="cuda")
    data = res.to_json()
    assert "ranges" not in data["cuda"]
    assert Result.from_json(json.loads(json.dumps(data))) == res


# --------------------------------------------------------------------------- cuDNN RNN


class _Rnn(nn.Module):
    def __init__(self, kind: str, batch_first: bool) -> None:
        super().__init__()
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = cls(16, 32, num_layers=2, batch_first=batch_first)
        self.head = nn.Linear(32, 4)

    def forward(self, x: object) -> object:
        return self.head(self.rnn(x)[0])


def _shape(kind: str, seq: int, batch: int) -> cuda_rnn.RnnShape:
    return cuda_rnn.RnnShape(kind, seq, batch, 32, 2, 1, 4)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_the_reserve_lives_from_the_forward_until_the_backward(kind: str) -> None:
    """`_cudnn_rnn` allocates the reserve (its lower end) in the forward, autograd keeps it, and it is freed
    in the backward; the workspace is freed at once; the range is the rest, stated and weighed."""
    request = Request(lambda: _Rnn(kind, True), (parse_input("4x10x16"),), config=_cuda())
    trace, result = run_traced(request)
    low, high = _shape(kind, 10, 4).reserve()
    allocs = {e.storage: e for e in trace.events if e.kind is Kind.ALLOC and e.iteration == 1}
    reserves = [e for e in allocs.values() if e.nbytes == low and e.phase is Phase.FORWARD]
    assert len(reserves) == 1, "one reserve per call, allocated in the forward"
    (reserve,) = reserves
    freed = [e for e in trace.events if e.kind is Kind.FREE and e.storage == reserve.storage]
    assert len(freed) == 1 and freed[0].phase is Phase.BACKWARD
    assert trace.storages[reserve.storage].dtype in ("uint8", "torch.uint8")
    assert result.cuda is not None
    (stated,) = result.cuda.ranges
    ws_low, ws_high = _shape(kind, 10, 4).workspace()
    assert stated.what == cuda_rnn.WHAT and stated.extra_bytes == (high - low) + (ws_high - ws_low)
    assert result.to_json()["cuda"]["ranges"][0]["extra_bytes"] == stated.extra_bytes
    assert Result.from_json(json.loads(json.dumps(result.to_json()))).cuda == result.cuda


def test_inference_has_no_reserve_and_states_the_workspace() -> None:
    request = Request(lambda: _Rnn("lstm", False), (parse_input("10x4x16"),), config=_cuda(mode="infer"))
    trace, result = run_traced(request)
    low, _ = _shape("lstm", 10, 4).reserve()
    assert not any(e.nbytes == low for e in trace.events if e.kind is Kind.ALLOC)
    assert result.cuda is not None
    (stated,) = result.cuda.ranges
    assert stated.extra_bytes == _shape("lstm", 10, 4).workspace()[1]


def test_an_rnn_range_straddling_the_gpu_is_borderline_and_named() -> None:
    base = simulate(lambda: _Rnn("gru", True), ["4x10x16"], device="cuda")
    assert base.cuda is not None
    (stated,) = base.cuda.ranges
    spare = stated.extra_bytes // 2
    res = simulate(lambda: _Rnn("gru", True), ["4x10x16"], device="cuda", gpu=_gpu(base, spare), headroom="0")
    assert res.verdict is not None and res.verdict.status == BORDERLINE
    assert res.verdict.uncertain_reasons == (cuda_rnn.WHAT,)
    text = _text(res)
    assert f"up to {human_bytes(stated.extra_bytes - spare)} short if {cuda_rnn.WHAT} takes its bound" in text
    assert f"uncertain: {cuda_rnn.WHAT}, {cuda_rnn.CAUSE}" in text
    assert f"{cuda_rnn.WHAT}: a range, up to +{human_bytes(stated.extra_bytes)}" in text
    wide = _gpu(base, stated.extra_bytes)
    roomy = simulate(lambda: _Rnn("gru", True), ["4x10x16"], device="cuda", gpu=wide, headroom="0")
    assert roomy.verdict is not None and roomy.verdict.status == FITS


def test_several_ranges_sum_and_each_is_named_with_its_own_bound() -> None:
    """A convolution's workspace estimate beside the RNN range: the verdict weighs their sum, and the line
    names each with its own upper end."""
    from dataclasses import replace

    from memtrace.tracer.core.specs import Headroom
    from memtrace.tracer.devices.gpu import verdict

    base = simulate(lambda: _Rnn("lstm", True), ["4x10x16"], device="cuda")
    assert base.cuda is not None
    (stated,) = base.cuda.ranges
    cuda = replace(base.cuda, cudnn_workspace_estimate={"low_bytes": 0, "high_bytes": 5 * MIB})
    total = stated.extra_bytes + 5 * MIB
    v = verdict(_gpu(base, total - 1), Headroom(nbytes=0), base.peak_bytes, cuda)
    assert v is not None and v.status == BORDERLINE and v.uncertain_bytes == total
    assert v.uncertain_reasons == (CUDNN_WORKSPACE, cuda_rnn.WHAT)
    text = _text(replace(base, cuda=cuda, verdict=v))
    assert f"(not simulated) (up to {human_bytes(5 * MIB)})" in text
    assert f"{cuda_rnn.WHAT}, {cuda_rnn.CAUSE} (up to {human_bytes(stated.extra_bytes)})" in text
    assert "take their bounds" in text


def test_the_cpu_target_keeps_its_own_rnn_kernels() -> None:
    res = simulate(lambda: _Rnn("lstm", True), ["4x10x16"], device="cpu")
    assert res.cuda is None and not any(cuda_rnn.WHAT in n for n in res.notes)


def _cuda(mode: str = "train") -> Config:
    return Config(device="cuda", mode=mode)


# --------------------------------------------------------------------------- inductor on a CUDA target


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 8))


def _compiled_mlp() -> nn.Module:
    """The user's own `torch.compile` (`--compile` goes through the same `torch.compile`)."""
    return torch.compile(_mlp())  # type: ignore[return-value]


@pytest.mark.slow
def test_inductor_on_cuda_is_a_range_up_to_the_eager_step() -> None:
    """Inductor's CUDA plan is not simulated: the figure is its CPU plan's, and the range reaches the eager
    step's reserved peak, simulated on its own here."""
    compiled = simulate(_compiled_mlp, ["32x64"], device="cuda")
    eager = simulate(_mlp, ["32x64"], device="cuda")
    assert compiled.cuda is not None and eager.cuda is not None
    (stated,) = compiled.cuda.ranges
    assert stated.what == INDUCTOR_CUDA_PLAN
    assert stated.extra_bytes == max(0, eager.cuda.reserved_peak_bytes - compiled.cuda.reserved_peak_bytes)
    assert stated.extra_bytes > 0  # the eager step holds more here (its cuBLAS workspace among it)
    gpu = _gpu(compiled, stated.extra_bytes // 2)
    judged = simulate(_compiled_mlp, ["32x64"], device="cuda", gpu=gpu, headroom="0")
    assert judged.verdict is not None and judged.verdict.status == BORDERLINE
    assert judged.verdict.uncertain_reasons == (INDUCTOR_CUDA_PLAN,)


# --------------------------------------------------------------------------- the owed GPU run's script


def test_the_collection_script_measures_the_rnn_grid_against_the_rules_range() -> None:
    """`collect_cudnn.py --rnn` covers the zoo's LSTM and says whether the rule's range held each measured
    size (here made-up sizes: one inside, one above the reserve's upper end)."""
    import importlib.util

    path = Path(__file__).parent.parent / "benchmarks" / "gpu" / "collect_cudnn.py"
    spec = importlib.util.spec_from_file_location("collect_cudnn", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    grid = mod.rnn_shapes(["float32"])
    zoo = cuda_rnn.RnnShape("lstm", 32, 8, 128, 2, 1, 0)
    assert (zoo, 64, "float32") in grid
    assert {s.kind for s, _, _ in grid} == {"lstm", "gru", "rnn_tanh", "rnn_relu"}
    assert any(s.proj for s, _, _ in grid) and any(s.tokens for s, _, _ in grid)
    sizes = mod.packed_batch_sizes(32, 8)  # a packed batch: lengths 32 down to 16, sorted
    assert len(sizes) == 32 and sizes == sorted(sizes, reverse=True) and sizes[0] == 8 and sizes[-1] < 8
    low, high = cuda_rnn.RnnShape("lstm", 32, 8, 128, 2, 1, 4).reserve()

    def found(reserve: int) -> dict[str, object]:
        train = {"reserve_bytes": reserve, "workspace_bytes": 1}
        return {"train": train, "infer": {"workspace_bytes": 0}, "backward_scratch_bytes": 2}

    inside = mod._rnn_entry(zoo, 64, "float32", found(low))
    above = mod._rnn_entry(zoo, 64, "float32", found(high + 1))
    assert inside["reserve_in_range"] and inside["workspace_in_range"] and not above["reserve_in_range"]


def test_the_recorded_h200_lstm_lies_inside_the_stated_range() -> None:
    """The zoo's LSTM as measured on an H200 with cuDNN 9.19 (benchmarks/results/h200-torch2.11, torch 2.11):
    its allocated and reserved peaks lie between the simulated figure and the range's upper end."""
    from zoo import ZOO_BY_NAME

    path = Path(__file__).parent.parent / "benchmarks" / "results" / "h200-torch2.11" / "verify.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    (row,) = [r for r in rows if r["case"] == "zoo/lstm/adamw"]
    measured = {c["figure"]: c["measured"] for c in row["checks"]}
    res = simulate(ZOO_BY_NAME["lstm"].build, ["8x32x64"], device="cuda", gpu="h200", optimizer="adamw")
    assert res.cuda is not None
    (stated,) = res.cuda.ranges
    low = {"allocated": res.cuda.allocated_peak_bytes, "reserved": res.cuda.reserved_peak_bytes}
    for figure in ("allocated", "reserved"):
        assert low[figure] <= measured[figure] <= low[figure] + stated.extra_bytes, figure
