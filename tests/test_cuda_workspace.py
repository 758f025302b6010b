"""The cuBLAS / cuBLASLt workspace (CublasHandlePool.cpp as PyTorch 2.13 builds it) and the cuDNN convolution
workspace estimate.

The size cases port PyTorch's `test_cublas_workspace_explicit_allocation` (test/test_cuda.py, `TestCuda`):
the default is `:4096:2:16:8`, 8 MiB and change, 32 MiB on Hopper; an empty or unparsable
CUBLAS_WORKSPACE_CONFIG falls back to it, and `:128:8:64:16:32:32` gives 3072 KiB.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memtrace.tracer.core.records import Category, Kind, Phase, Result, Trace
from memtrace.tracer.devices.cuda import conv
from memtrace.tracer.devices.cuda import cublas_workspace as cw
from memtrace.tracer.outputs.report import cuda_lines
from memtrace.tracer.simulate import Config, simulate, trace_model

MIB = 2**20


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("6.1", 8_519_680),
        ("7.5", 8_519_680),
        ("8.0", 8_519_680),
        ("8.6", 8_519_680),
        ("8.9", 8_519_680),
        ("9.0", 32 * MIB),
        ("10.0", 32 * MIB),
        ("10.3", 32 * MIB),
        ("11.0", 8_519_680),  # sm 11 got 32 MiB after the 2.13 branch cut (pytorch#189312)
        ("12.0", 32 * MIB),
    ],
)
def test_default_size_per_architecture(arch: str, expected: int) -> None:
    assert cw.default_bytes(arch) == expected
    assert cw.cublas_bytes(arch, {}) == expected


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("", None),  # test_cuda.py: "check default"
        ("-1", None),  # "check default with bad user config"
        (":128:8:64:16:32:32", 3072 * 1024),  # "check valid config"
        (":4096:8", 32 * MIB),  # the deterministic-algorithms setting
        (":16:8", 128 * 1024),
        (":4096:2:16:8", 8_519_680),
    ],
)
def test_cublas_workspace_config(config: str, expected: int | None) -> None:
    for arch in ("8.0", "9.0"):
        want = cw.default_bytes(arch) if expected is None else expected
        assert cw.cublas_bytes(arch, {"CUBLAS_WORKSPACE_CONFIG": config}) == want


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 8_519_680),  # unified by default: the cuBLAS workspace
        ({"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "1"}, 8_519_680),
        ({"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "yes"}, 8_519_680),  # check_env: neither 0 nor 1 is unset
        ({"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "0"}, MIB),
        ({"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "0", "CUBLASLT_WORKSPACE_SIZE": "4096"}, 4 * MIB),
        ({"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "0", "CUBLASLT_WORKSPACE_SIZE": " 2048kib"}, 2 * MIB),
        ({"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "0", "CUBLASLT_WORKSPACE_SIZE": "lots"}, MIB),
        ({"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "0", "CUBLASLT_WORKSPACE_SIZE": "99999999999"}, MIB),
        ({"CUBLAS_WORKSPACE_CONFIG": ":16:8"}, 128 * 1024),
    ],
)
def test_cublaslt_workspace(env: dict[str, str], expected: int) -> None:
    assert cw.cublaslt_bytes("8.0", env) == expected


def test_workspace_keys_per_thread_and_library() -> None:
    assert cw.workspace_key(False, False, {}) == "cublas:main"
    assert cw.workspace_key(True, False, {}) == "cublas:main"  # unified: Lt shares the map entry
    assert cw.workspace_key(True, True, {"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "0"}) == "cublaslt:autograd"


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def _trace(arch: str | None = None, mode: str = "train") -> Trace:
    with torch.device("meta"):
        model = _mlp()
    return trace_model(
        model, [torch.empty(8, 64, device="meta")], Config(device="cuda", arch=arch, mode=mode)
    )


def _workspaces(trace: Trace) -> list[tuple[Phase, int, int]]:
    """(phase, iteration, bytes) of every workspace allocation; none is ever freed."""
    ids = {s for s, info in trace.storages.items() if info.category is Category.WORKSPACE}
    assert not [e for e in trace.events if e.storage in ids and e.kind is Kind.FREE]
    return [(e.phase, e.iteration, e.nbytes) for e in trace.events if e.storage in ids]


@pytest.mark.parametrize(("arch", "size"), [(None, 8_519_680), ("8.6", 8_519_680), ("9.0", 32 * MIB)])
def test_step_holds_one_workspace_per_thread(arch: str | None, size: int) -> None:
    """The main thread's at the first forward matmul, autograd's device thread's at the first backward one;
    the second step allocates none."""
    assert _workspaces(_trace(arch)) == [(Phase.FORWARD, 0, size), (Phase.BACKWARD, 0, size)]


def test_inference_holds_one_workspace() -> None:
    assert _workspaces(_trace(mode="infer")) == [(Phase.FORWARD, 0, 8_519_680)]


def test_environment_sets_the_workspaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    assert [n for _, _, n in _workspaces(_trace())] == [32 * MIB, 32 * MIB]
    monkeypatch.setenv("TORCH_CUBLASLT_UNIFIED_WORKSPACE", "0")  # forward addmm (bias): Lt; backward mm
    assert _workspaces(_trace()) == [(Phase.FORWARD, 0, MIB), (Phase.BACKWARD, 0, 32 * MIB)]


def test_workspaces_count_in_the_peak_and_sum_with_the_categories() -> None:
    res = simulate(_mlp, ["8x64"], device="cuda")
    assert res.peak.by_category[Category.WORKSPACE] == 2 * 8_519_680
    assert sum(res.peak.by_category.values()) == res.peak_bytes
    cpu = simulate(_mlp, ["8x64"], device="cpu")
    assert cpu.peak.by_category[Category.WORKSPACE] == 0
    assert cpu.totals[Category.WORKSPACE] == 0


def test_conv_workspace_estimate_per_call() -> None:
    # input 2x3x32x32, weight 16x3x3x3, output 2x16x30x30 in fp32: three times the three operands
    assert conv.conv_workspace_estimate((2, 3, 32, 32), (16, 3, 3, 3), (2, 16, 30, 30), 4) == (0, 424_512)
    assert conv.conv_workspace_estimate((1, 512, 7, 7), (512, 512, 3, 3), (1, 512, 7, 7), 2) == (
        0,
        14_456_832,
    )
    assert conv.estimate_json(None) is None


@pytest.mark.parametrize(
    ("x", "w", "y", "measured"),
    [  # run_conv_plan's largest workspaces in the H200 snapshot of the seed CNN, 8x3x144x256, fp32
        ((8, 32, 72, 128), (64, 32, 3, 3), (8, 64, 72, 128), 29_196_432),  # conv2's weight gradient
        ((8, 64, 36, 64), (128, 64, 3, 3), (8, 128, 36, 64), 18_711_263),  # conv3's weight gradient
        ((8, 128, 18, 32), (128, 128, 3, 3), (8, 128, 18, 32), 14_155_776),  # conv4's weight gradient
        ((8, 64, 36, 64), (128, 64, 3, 3), (8, 128, 36, 64), 14_450_835),  # conv3's forward
    ],
)
def test_conv_workspace_bound_covers_the_measured_workspaces(
    x: tuple[int, ...], w: tuple[int, ...], y: tuple[int, ...], measured: int
) -> None:
    assert conv.conv_workspace_estimate(x, w, y, 4)[1] >= measured


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3))


def test_conv_workspace_is_reported_beside_the_peak_not_in_it() -> None:
    res = simulate(_cnn, ["2x3x32x32"], device="cuda")
    assert res.cuda is not None
    second = 3 * (2 * 16 * 30 * 30 + 8 * 16 * 3 * 3 + 2 * 8 * 28 * 28) * 4  # the second conv's operands
    assert res.cuda.cudnn_workspace_estimate == {"low_bytes": 0, "high_bytes": second}
    assert sum(res.peak.by_category.values()) == res.peak_bytes  # nothing folded in
    assert "cuDNN conv workspace not in the peak: +0 B..+" in cuda_lines(res.cuda).plain
    again = Result.from_json(res.to_json())
    assert again.cuda is not None and again.cuda.cudnn_workspace_estimate == res.cuda.cudnn_workspace_estimate
    assert simulate(_cnn, ["2x3x32x32"], device="cpu").cuda is None
    mlp = simulate(_mlp, ["8x64"], device="cuda")
    assert mlp.cuda is not None and mlp.cuda.cudnn_workspace_estimate is None


def test_before_2_12_a_cublaslt_call_keeps_its_own_workspace_beside_cublas() -> None:
    """Measured on an H200, torch 2.11.0+cu130: a Linear's addmm allocated the 32 MiB cuBLAS workspace and
    then a 1 MiB cuBLASLt one, with TORCH_CUBLASLT_UNIFIED_WORKSPACE unset and with it 0."""
    for env in ({}, {"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "0"}):
        assert not cw.unified(env, (2, 11))
        assert cw.lt_sets_up_cublas(env, (2, 11))
        assert cw.cublaslt_bytes("9.0", env, (2, 11)) == 1_048_576
        assert cw.workspace_key(True, False, env, (2, 11)) == "cublaslt:main"
    assert cw.unified({"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "1"}, (2, 11))
    assert cw.unified({}, (2, 13)) and not cw.lt_sets_up_cublas(
        {"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "0"}, (2, 13)
    )
