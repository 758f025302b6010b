"""fit and sweep: boundaries proven by the simulations on both sides, few simulations, and the CPU allocator
agreeing with the boundary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference import measure
from test_cli import run
from zoo import ZOO_BY_NAME

from memtrace.tracer.core.records import GpuSpec, Result
from memtrace.tracer.core.specs import Headroom, OptimizerSpec, parse_gpu, parse_input
from memtrace.tracer.simulate import Config, Request
from memtrace.tracer.simulate import run as simulate_request
from memtrace.tracer.studies.fit import fit, sure_bytes

REPO = Path(__file__).resolve().parent.parent
SEED = str(REPO / "benchmarks" / "models" / "seed_cnn.py") + ":build"

MODELS = [
    ("mlp", "Bx512", GpuSpec("200MB", 200 * 10**6)),
    ("transformer_sdpa", "Bx64:int64", GpuSpec("6GB", 6 * 10**9)),
    ("seed_cnn", "Bx3x144x256", GpuSpec("rtx4070", 12 * 2**30)),
]


# cpu: the peak grows about affinely and the line finds the boundary in few simulations; cuda: reserved
# memory is held against the budget; it grows in segment steps and is not even monotone (the cuBLAS
# workspaces share a 20 MiB segment with what changes with B), so bisection finishes the search.
SIMULATIONS = {"cpu": 8, "cuda": 20}


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("name,spec,gpu", MODELS, ids=[m[0] for m in MODELS])
def test_fit_boundary_is_proven_with_few_simulations(name: str, spec: str, gpu: GpuSpec, device: str) -> None:
    config = Config(device=device)
    request = Request(ZOO_BY_NAME[name].build, (parse_input(spec),), config=config)
    res = fit(request, gpu, Headroom(nbytes=0))
    assert 1 <= res.max_value <= 4096
    searches = 2 if res.borderline_value else 1  # the sure boundary, then the borderline one beyond it
    assert res.simulations <= SIMULATIONS[device] * searches, res.probes
    assert res.basis == ("reserved" if device == "cuda" else "allocated")

    def at(value: int) -> Result:
        return simulate_request(
            Request(request.builder, (parse_input(spec.replace("B", str(value))),), config=config)
        )

    sure, after = at(res.max_value), at(res.max_value + 1)
    assert sure_bytes(sure) <= res.budget_bytes < sure_bytes(after)  # surely fits, and the next one not
    assert sure.fit_bytes == res.peak_bytes and after.fit_bytes == res.next_peak_bytes
    assert sure.peak_bytes == res.allocated_bytes
    if res.borderline_value:  # fits by the simulation alone, and the next one not even so
        edge, over = at(res.borderline_value), at(res.borderline_value + 1)
        assert edge.fit_bytes == res.borderline_peak_bytes <= res.budget_bytes < sure_bytes(edge)
        assert res.budget_bytes < over.fit_bytes == res.borderline_next_peak_bytes
    else:
        assert res.budget_bytes < after.fit_bytes  # no value fits by the simulation alone beyond max_value


def test_seed_cnn_low_resolution_batch_above_256(capsys: pytest.CaptureFixture[str]) -> None:
    # The seed's batch 256 at 144x256 fits by the simulation; cuDNN's convolution workspace (not simulated)
    # at its bound could take more than the spare: the batch that surely fits is smaller, 256 borderline
    code, out, err = run(capsys, "fit", SEED, "--input", "Bx3x144x256", "--gpu", "rtx4070", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["borderline_value"] > 256 > data["max_value"] > 0 and data["symbol"] == "B"
    for key in ("peak_bytes", "next_peak_bytes", "budget_bytes", "simulations", "uncertain_bytes"):
        assert isinstance(data[key], int)
    assert data["uncertain_reasons"] == ["cuDNN's convolution workspace"]
    assert data["peak_bytes"] + data["uncertain_bytes"] <= data["budget_bytes"]
    assert data["borderline_peak_bytes"] <= data["budget_bytes"] < data["borderline_next_peak_bytes"]
    text = run(capsys, "fit", SEED, "--input", "Bx3x144x256", "--gpu", "rtx4070")[1]
    assert f"B={data['max_value']} fits: reserved " in text and "(allocated " in text
    assert f"B={data['borderline_value']} is borderline: reserved " in text


def test_seed_cnn_1080p_batch_1_does_not_fit_and_a_change_does(capsys: pytest.CaptureFixture[str]) -> None:
    # Single-tensor Adam (two full-size temporaries per step) needs 12.7 GB at batch 1: over a 12 GiB budget.
    code, out, err = run(
        capsys,
        "fit",
        SEED,
        "--arg",
        "h=1080",
        "--arg",
        "w=1920",
        "--input",
        "Bx3x1080x1920",
        "--gpu",
        "rtx4070",
        "--optimizer",
        "adam:foreach=false",
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["max_value"] == 0 and data["peak_bytes"] > data["budget_bytes"]
    changes = {s["change"]: s["max_value"] for s in data["suggestions"]}
    assert changes.get("SGD with momentum", 0) >= 1
    assert changes.get("half resolution", 0) >= 1


def test_target_batch_plan_is_verified(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "fit",
        SEED,
        "--input",
        "Bx3x144x256",
        "--gpu",
        "2GB",
        "--headroom",
        "0",
        "--target-batch",
        "1000",
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    plan = data["target_batch"]
    assert plan["effective_batch"] >= 1000 and plan["micro_batch"] <= data["max_value"]
    assert plan["steps"] == -(-1000 // data["max_value"])
    assert plan["peak_bytes"] <= data["budget_bytes"]


def test_fit_on_cpu_agrees_with_real_cpu_runs() -> None:
    case = ZOO_BY_NAME["mlp"]
    budget = GpuSpec("150MB", 150 * 10**6)
    config = Config("train", OptimizerSpec("sgd", (("momentum", 0.9),)), "cpu")
    res = fit(Request(case.build, (parse_input("Bx512"),), config=config), budget, Headroom(nbytes=0))
    b = res.max_value
    assert b > 1
    peaks = {}
    for value in (b, b + 1):
        x = torch.randn(value, 512)
        peaks[value] = measure(case.build(), [x], "train", config.optimizer).peak
    assert peaks[b] <= budget.bytes < peaks[b + 1]


def test_sweep_table_and_formats(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "sweep",
        SEED,
        "--arg",
        "h=H",
        "--arg",
        "w=W",
        "--input",
        "Bx3xHxW",
        "--set",
        "B=1,4",
        "--set",
        "HxW=144x256,288x512",
        "--gpu",
        "rtx4070",
    ]
    code, out, err = run(capsys, *args, "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 4 and {tuple(r["values"].values()) for r in rows} == {
        (1, 144, 256),
        (1, 288, 512),
        (4, 144, 256),
        (4, 288, 512),
    }
    by = {tuple(r["values"].values()): r for r in rows}
    assert by[(4, 144, 256)]["peak_bytes"] > by[(1, 144, 256)]["peak_bytes"]
    assert by[(4, 144, 256)]["input_bytes"] == 4 * 3 * 144 * 256 * 4
    code, out, _ = run(capsys, *args, "--format", "csv")
    assert code == 0 and out.splitlines()[0].startswith("B,H,W,input_bytes")
    code, out, _ = run(capsys, *args, "--format", "markdown")
    assert code == 0 and out.startswith("| B | H | W |")


def test_gpus_lists_presets(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "gpus")
    assert code == 0 and "rtx4070" in out and "a100-80gb" in out and "8.9" in out


BAD = [
    (["fit", SEED, "--input", "1x3x144x256", "--gpu", "rtx4070"], "no symbol in --input"),
    (["sweep", SEED, "--input", "Bx3x144x256", "--set", "B=1,2", "--set", "B=4"], "--set gives B twice"),
    (["fit", SEED, "--input", "Bx3x144x256", "--gpu", "0GB"], "must be greater than zero"),
    (["fit", SEED, "--input", "Bx3x144x256", "--gpu", "12XB"], "12XB"),
    (["sweep", SEED, "--input", "Bx3xHxW", "--set", "B=1"], "has no --set"),
]


@pytest.mark.parametrize("argv,needle", BAD, ids=[b[1] for b in BAD])
def test_bad_fit_and_sweep_input(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    code, _, err = run(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err


def test_gpu_parse_for_fit() -> None:
    assert parse_gpu("rtx4070").bytes == 12 * 2**30
