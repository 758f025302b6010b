"""The CUDA figures of a simulation: the caching allocator replayed over the step (allocated, requested,
reserved), the verdict on reserved memory, the allocator's settings, the SDPA flags, and `memtrace verify`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_cli import SEED, run
from zoo import ZOO_BY_NAME

from memtrace.tracer.core.records import Kind, Result
from memtrace.tracer.core.specs import parse_cudnn_version, parse_gpu, parse_input
from memtrace.tracer.devices.cuda.allocator import replay_events
from memtrace.tracer.simulate import Config, simulate, trace_model


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    data: dict[str, object] = json.loads(out)
    return data


def test_schema_2_cuda_figures(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, SEED, "--input", "8x3x144x256", "--gpu", "rtx4070")
    assert data["schema"] == 4  # 3 added the timeline and the flags, 4 the verdict's status; cuda as in 2
    cuda = data["cuda"]
    assert isinstance(cuda, dict)
    keys = {"allocated_peak_bytes", "requested_peak_bytes", "reserved_peak_bytes", "context_bytes_estimate"}
    assert keys | {"segments"} <= set(cuda)
    assert cuda["allocated_peak_bytes"] == data["peak_bytes"] == sum(data["by_category"].values())  # type: ignore[union-attr]
    assert cuda["requested_peak_bytes"] <= cuda["allocated_peak_bytes"] <= cuda["reserved_peak_bytes"]
    assert sum(s["total_size"] for s in cuda["segments"]) == cuda["reserved_peak_bytes"]
    assert data["verdict"]["basis"] == "reserved"  # type: ignore[index]
    assert Result.from_json(data).cuda is not None
    assert _json(capsys, SEED, "--input", "8x3x144x256", "--device", "cpu")["cuda"] is None


def test_allocated_is_the_replays_peak_over_both_steps() -> None:
    """The placed trace's peak is the allocator's own allocated peak (max_memory_allocated)."""
    config = Config(device="cuda")
    with torch.device("meta"):
        model = ZOO_BY_NAME["transformer_sdpa"].build()
    trace = trace_model(model, [torch.empty(4, 64, dtype=torch.int64, device="meta")], config)
    events = [(s, trace.storages[s].nbytes) for s in trace.baseline]
    stream = [("alloc", sid, n) for sid, n in events]
    stream += [(e.kind.value, e.storage, e.nbytes) for e in trace.events]
    assert all(e.kind in (Kind.ALLOC, Kind.FREE) for e in trace.events)
    stats = replay_events(stream)
    res = simulate(ZOO_BY_NAME["transformer_sdpa"].build, ["4x64:int64"])
    assert res.cuda is not None
    assert max(res.peak_bytes, res.first_iteration_peak) == stats.allocated_peak_bytes
    assert res.cuda.reserved_peak_bytes == stats.reserved_peak_bytes


def test_verdict_holds_reserved_memory_with_the_context_as_headroom() -> None:
    gpu = parse_gpu("rtx4070")
    res = simulate(SEED, ["64x3x144x256"], gpu=gpu)
    assert res.cuda is not None and res.verdict is not None
    assert res.verdict.basis == "reserved"
    assert res.verdict.budget_bytes == gpu.bytes - res.cuda.context_bytes_estimate
    assert res.verdict.spare_bytes == res.verdict.budget_bytes - res.cuda.reserved_peak_bytes
    cpu = simulate(SEED, ["64x3x144x256"], gpu=gpu, device="cpu")
    assert cpu.verdict is not None and cpu.verdict.basis == "allocated"
    assert cpu.verdict.budget_bytes < res.verdict.budget_bytes  # the default keeps 5% for fragmentation


def test_alloc_conf_changes_reserved_and_bad_settings_are_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [SEED, "--input", "16x3x144x256"]
    plain = _json(capsys, *args)["cuda"]
    expandable = _json(capsys, *args, "--alloc-conf", "expandable_segments:True")["cuda"]
    assert plain["allocated_peak_bytes"] == expandable["allocated_peak_bytes"]  # type: ignore[index]
    assert expandable["reserved_peak_bytes"] < plain["reserved_peak_bytes"]  # type: ignore[index]
    code, _out, err = run(capsys, *args, "--alloc-conf", "max_split_size_mb:1")
    assert code == 2 and err.startswith("memtrace: error: allocator settings") and len(err.splitlines()) == 1


def test_sdpa_flags_reach_the_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    builder = tmp_path / "attn.py"
    builder.write_text(
        "import torch\nfrom torch import nn\nimport torch.nn.functional as F\n"
        "class A(nn.Module):\n"
        "    def __init__(self):\n        super().__init__(); self.qkv = nn.Linear(64, 192)\n"
        "    def forward(self, x):\n"
        "        q, k, v = self.qkv(x).view(2, 128, 3, 4, 16).permute(2, 0, 3, 1, 4)\n"
        "        return F.scaled_dot_product_attention(q, k, v, is_causal=True)\n"
        "def build():\n    return A()\n"
    )
    args = [f"{builder}:build", "--input", "2x128x64", "--amp", "bf16", "--gpu", "h100-80gb"]
    assert any("flash x2" in n for n in _json(capsys, *args)["notes"])  # type: ignore[union-attr]
    cudnn = _json(capsys, *args, "--cudnn-version", "9.16.0")["notes"]
    assert any("cuDNN 9.16.0" in n and "cudnn x2" in n for n in cudnn)  # type: ignore[union-attr]
    math = _json(capsys, *args, "--sdpa-backend", "math")["notes"]
    assert any(n.endswith("math x2") for n in math)  # type: ignore[union-attr]


@pytest.mark.parametrize("text,value", [("9.10.2", 91002), ("91002", 91002), ("9.16", 91600)])
def test_cudnn_versions(text: str, value: int) -> None:
    assert parse_cudnn_version(text) == value


@pytest.mark.parametrize("name,spec", [("mlp", "64x512"), ("transformer_sdpa", "4x64:int64")])
def test_verify_on_the_cpu(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, spec: str) -> None:
    builder = tmp_path / "zoo_builder.py"
    builder.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from zoo import ZOO_BY_NAME\n"
        f"def build():\n    return ZOO_BY_NAME[{name!r}].build()\n"
    )
    data = _json(capsys, "verify", f"{builder}:build", "--input", spec, "--device", "cpu")
    (check,) = data["checks"]  # type: ignore[misc]
    assert data["ok"] is True and check["figure"] == "peak" and abs(check["error"]) <= 0.001


def test_verify_on_cuda_without_a_gpu_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _out, err = run(capsys, "verify", SEED, "--input", "2x3x144x256")
    assert code == 2 and "no CUDA device here" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_verify_on_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    _code, out, err = run(capsys, "verify", SEED, "--input", "8x3x144x256", "--json", "--tolerance", "5%")
    data = json.loads(out)
    assert {c["figure"] for c in data["checks"]} >= {"allocated", "reserved"}, err


def test_sweep_simulates_once_per_gpu_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    from memtrace.tracer.simulate import Request
    from memtrace.tracer.studies import fit as fit_module

    archs: list[str | None] = []
    real_run = fit_module.run

    def counting(req: Request) -> Result:
        archs.append(req.config.arch)
        return real_run(req)

    monkeypatch.setattr(fit_module, "run", counting)
    gpus = [parse_gpu(g) for g in ("a100-80gb", "a100-40gb", "h100-80gb", "24GB")]
    request = Request(SEED, (parse_input("Bx3x144x256"),))
    rows = fit_module.sweep(request, fit_module.parse_sets([("B", [(1,), (2,)])]), gpus, None)
    assert archs == ["8.0", "9.0", None] * 2  # the two A100s share one simulation
    assert all(set(r.fits) == {g.name for g in gpus} for r in rows)
