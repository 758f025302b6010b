"""The CUDA model held against real GPU measurements committed in benchmarks/results/h200-torch2.11/: an
H200 (sm90) with torch 2.11.0+cu130 and cuDNN 9.19, `memtrace verify --device cuda` over
benchmarks/gpu/verify_cases.py, and memory snapshots of the cuDNN-attention probes.

Only cases whose kernels follow the same rules on the PyTorch running here are simulated again: the SDPA
probes have no matmul (the cuBLAS workspaces changed after 2.11) and their backend is the same choice on
2.11 and from 2.12 on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from memtrace.cli.main import main
from memtrace.tracer.core.registry import Workspace
from memtrace.tracer.devices.cuda import attention
from memtrace.tracer.devices.cuda.sdp_choice import Call, Gpu, Operand, choose

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "h200-torch2.11"


def _measured() -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in (RESULTS / "verify.jsonl").read_text().splitlines() if line]
    return {r["case"]: r for r in rows if "checks" in r}


@pytest.mark.parametrize(
    "case",
    [
        "sdpa/flash-1x32x4096x128",  # cuDNN attention on this GPU (cuDNN 9.19 is preferred on sm90)
        "sdpa/gqa8-1x32x4096x128",
        "sdpa/boolmask-1x8x2048x64",
        "sdpa/splitkv-infer-1x8x64x4096",  # cuDNN in inference
    ],
)
def test_sdpa_probes_equal_the_h200(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    row = _measured()[case]
    flags = [*row["flags"], "--device", "cuda", "--gpu", "h200", "--cudnn-version", "9.19.0", "--json"]
    try:
        main(["trace", *flags])
    except SystemExit as exc:
        assert exc.code in (0, None)
    result = json.loads(capsys.readouterr().out)
    measured = {c["figure"]: c["measured"] for c in row["checks"]}
    assert max(result["peak"]["bytes"], result["first_iteration_peak_bytes"]) == measured["allocated"]
    assert result["cuda"]["reserved_peak_bytes"] == measured["reserved"]


def test_cudnn_backward_workspace_is_what_the_snapshots_showed() -> None:
    """run_cudnn_SDP_bprop's workspace in the three snapshots: 67,633,408, 134,742,272 and 4,260,096 B."""

    def q(b: int, h: int, s: int, d: int) -> torch.Tensor:
        return torch.empty(b, h, s, d, dtype=torch.bfloat16, device="meta")

    assert attention.cudnn_backward_workspace(q(1, 32, 4096, 128), q(1, 32, 4096, 128)) == 67_633_408
    assert attention.cudnn_backward_workspace(q(1, 32, 4096, 128), q(1, 8, 4096, 128)) == 134_742_272
    assert attention.cudnn_backward_workspace(q(1, 8, 2048, 64), q(1, 8, 2048, 64)) == 4_260_096


def test_cudnn_backward_copies_grad_out_only_when_its_strides_differ() -> None:
    q = torch.empty(1, 4, 128, 64, dtype=torch.bfloat16, device="meta")
    o = torch.empty(1, 128, 4, 64, dtype=torch.bfloat16, device="meta").transpose(1, 2)
    grad_out = torch.empty(1, 4, 128, 64, dtype=torch.bfloat16, device="meta")  # not the output's strides
    args = (grad_out, q, q, q, o)
    steps = _steps(attention.cudnn_backward(args, {}, None))
    assert [s.kind for s in steps] == ["output", "alloc", "alloc", "free", "free"]
    assert steps[1].nbytes == o.numel() * 2
    same = _steps(attention.cudnn_backward((o, q, q, q, o), {}, None))
    assert [s.kind for s in same] == ["output", "alloc", "free"]


def _steps(ws: Workspace | None) -> list[Any]:
    assert ws is not None
    return ws.steps


def _call(shape: tuple[int, ...], kv: int, dtype: str, mask: bool, dropout: float, gqa: bool) -> Call:
    def op(s: tuple[int, ...], grad: bool = True) -> Operand:
        stride = tuple(int(torch.tensor(s[i + 1 :]).prod()) for i in range(len(s)))
        return Operand(s, stride, dtype, 4 if dtype == "float32" else 2, 0, grad)

    b, _, s, d = shape
    kshape = (b, kv, s, d)
    m = op((s, s), grad=False) if mask else None
    return Call(op(shape), op(kshape), op(kshape), m, dropout, not mask, gqa)


@pytest.mark.parametrize(
    ("call", "on_211", "from_212"),
    [
        (_call((1, 16, 2048, 128), 16, "bfloat16", False, 0.1, False), "cudnn", "flash"),
        (_call((1, 8, 2048, 256), 8, "bfloat16", False, 0.0, False), "cudnn", "flash"),
        (_call((1, 8, 1024, 64), 1, "float32", True, 0.0, True), "math", "efficient"),
    ],
)
def test_backend_rules_follow_the_torch_version(call: Call, on_211: str, from_212: str) -> None:
    """torch 2.11 on the H200 ran cuDNN with dropout 0.1 and head dim 256 and sent fp32 + mask + GQA to
    math (`torch._fused_sdp_choice`, facts.json); the 2.13 source rejects the first two, takes the third."""
    assert choose(call, Gpu("9.0", 91900, "13.0", torch_version=(2, 11))).backend == on_211
    assert choose(call, Gpu("9.0", 91900, "13.0", torch_version=(2, 13))).backend == from_212


def test_hf_attention_gets_is_causal_and_gqa_as_on_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """With tracing's answers to its mask checks, HF built a 4-D mask and repeated k/v, and the Llama step
    came out 2.6-15% above the H200; the real run passes `is_causal=True, enable_gqa=True`. Read where the
    CUDA rule describes each call of the simulated step (a spy on `F.scaled_dot_product_attention` itself
    sees only calls that fall back to PyTorch's function, e.g. the parameter probe's on the math path)."""
    pytest.importorskip("transformers")
    from memtrace.tracer.devices.cuda import attention
    from memtrace.tracer.simulate import simulate

    calls: list[tuple[Any, ...]] = []
    describe = attention.describe

    def spy(q: Any, k: Any, v: Any, mask: Any, dropout: float, is_causal: bool, gqa: bool) -> Any:
        calls.append((tuple(k.shape), mask, is_causal, gqa))
        return describe(q, k, v, mask, dropout, is_causal, gqa)

    monkeypatch.setattr(attention, "describe", spy)
    simulate("benchmarks/models/hf_llama.py:build", ["input_ids=1x64:int64"], device="cuda")
    assert calls and all(c == ((1, 2, 64, 64), None, True, True) for c in calls)


def test_checkpoint_recompute_keeps_cuda_autocast() -> None:
    """The recompute of a checkpointed block runs under the forward's CUDA autocast state (it failed with
    bf16 activations meeting fp32 weights, the H200 case seed/144x256-b64-bf16-ckpt)."""
    from memtrace.tracer.engine.recipes import Recipe
    from memtrace.tracer.simulate import simulate

    result = simulate(
        "benchmarks/models/seed_cnn.py:build",
        ["4x3x144x256"],
        device="cuda",
        recipe=Recipe(amp="bf16", checkpoint=("conv*",)),
    )
    assert "recompute" in {p.phase.value for p in result.phases}
