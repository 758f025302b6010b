"""DDP and FSDP2 per rank: memtrace's simulation on the fake process group against real gloo runs.

The ground truth is benchmarks/dist_reference.py under `torchrun --nproc-per-node 2` on gloo: each rank's
CPU-allocator peak, measured as tests/reference.py measures one process. One launch measures every case.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist
from click.testing import CliRunner

from memtrace.cli.main import cli, main
from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.core.parallel import Parallel
from memtrace.tracer.core.records import Category, Result
from memtrace.tracer.core.specs import parse_input, parse_tolerance
from memtrace.tracer.engine.distributed import auto_wrap, fsdp_targets
from memtrace.tracer.engine.loader import load_object
from memtrace.tracer.engine.recipes import Recipe
from memtrace.tracer.simulate import Config, Request, run

ROOT = Path(__file__).resolve().parent.parent
MODELS = str(ROOT / "benchmarks" / "models" / "dist_models.py")
TOLERANCE = parse_tolerance("1%")

# (name, builder, input, engine, FSDP2 wrap globs, checkpoint globs, reshard after forward, param dtype)
CASES = [
    ("cnn-ddp", "cnn", "8x3x32x32", "ddp", (), (), True, None),
    ("cnn-fsdp", "cnn", "8x3x32x32", "fsdp", (), (), True, None),
    ("lm-ddp", "lm", "4x64:int64", "ddp", (), (), True, None),
    ("lm-fsdp", "lm", "4x64:int64", "fsdp", ("blocks.*",), (), True, None),
    ("lm-fsdp-checkpoint", "lm", "4x64:int64", "fsdp", ("blocks.*",), ("blocks.*",), True, None),
    ("lm-fsdp-no-reshard", "lm", "4x64:int64", "fsdp", ("blocks.*",), (), False, None),
    # bf16 all-gathers: the peak is on gloo's all-gather buffers (devices/cpu/gloo.py)
    ("lm-fsdp-bf16", "lm", "4x64:int64", "fsdp", ("blocks.*",), (), True, "bf16"),
]
RANKS = (0, 1)

gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available in this PyTorch build: no real run to hold against",
)


def _case_args(
    builder: str,
    shape: str,
    engine: str,
    wrap: tuple[str, ...],
    checkpoint: tuple[str, ...],
    reshard: bool,
    param_dtype: str | None = None,
) -> list[str]:
    args = [f"{MODELS}:{builder}", "--input", shape]
    if engine == "fsdp":
        args.append("--fsdp")
    for glob in wrap:
        args += ["--fsdp-wrap", glob]
    for glob in checkpoint:
        args += ["--checkpoint", glob]
    args += ["--fsdp-param-dtype", param_dtype] if param_dtype else []
    return args + ([] if reshard else ["--reshard-after-forward", "no"])


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], dict[str, Any]]:
    """Every case's per-rank figures from one real 2-rank gloo launch."""
    out = tmp_path_factory.mktemp("gloo")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += [str(ROOT / "benchmarks" / "dist_reference.py"), "--out", str(out)]
    for i, (_, *case) in enumerate(CASES):
        command += ([";"] if i else []) + _case_args(*case)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        (name, rank): json.loads((out / f"case{i}-rank{rank}.json").read_text())
        for i, (name, *_) in enumerate(CASES)
        for rank in RANKS
    }


def _simulate(
    builder: str,
    shape: str,
    engine: str,
    wrap: tuple[str, ...],
    rank: int,
    checkpoint: tuple[str, ...] = (),
    reshard: bool = True,
    param_dtype: str | None = None,
) -> Result:
    parallel = Parallel(engine, 2, rank, wrap=wrap, reshard_after_forward=reshard, param_dtype=param_dtype)
    config = Config(device="cpu", parallel=parallel, recipe=Recipe(checkpoint=checkpoint))
    return run(Request(f"{MODELS}:{builder}", (parse_input(shape),), (), config))


@gloo
@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize(
    ("name", "builder", "shape", "engine", "wrap", "checkpoint", "reshard", "param_dtype"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_per_rank_peak_within_1_percent_of_gloo(
    measured: dict[tuple[str, int], dict[str, Any]],
    name: str,
    builder: str,
    shape: str,
    engine: str,
    wrap: tuple[str, ...],
    checkpoint: tuple[str, ...],
    reshard: bool,
    param_dtype: str | None,
    rank: int,
) -> None:
    real = measured[(name, rank)]
    result = _simulate(builder, shape, engine, wrap, rank, checkpoint, reshard, param_dtype)
    error = (result.peak_bytes - real["peak"]) / real["peak"]
    assert abs(error) <= TOLERANCE, (
        f"{name} rank {rank}: {result.peak_bytes:,} vs {real['peak']:,} ({error:+.3%})"
    )
    assert result.peak.by_category.get(Category.COMMUNICATION, 0) > 0
    assert sum(result.peak.by_category.values()) == result.peak_bytes


def test_uneven_shards_differ_between_ranks() -> None:
    """The LM's vocabulary (1001) splits 501/500: FSDP2 pads rank 1's shards of the embedding and the head to
    rank 0's size, but Adam's state follows the unpadded shard, so rank 1 holds 2 x 2 x 128 fp32 fewer."""
    first, second = (_simulate("lm", "4x64:int64", "fsdp", ("blocks.*",), r) for r in RANKS)
    assert first.peak.by_category[Category.PARAMETER] == second.peak.by_category[Category.PARAMETER]
    state = [r.peak.by_category[Category.OPTIMIZER_STATE] for r in (first, second)]
    assert state[0] - state[1] == 2 * 2 * 128 * 4


def test_fsdp_shards_parameters_and_optimizer_state() -> None:
    """Against DDP on the same model, FSDP2 on 2 ranks holds about half the parameters and Adam's state."""
    ddp = _simulate("lm", "4x64:int64", "ddp", (), 0)
    fsdp = _simulate("lm", "4x64:int64", "fsdp", ("blocks.*",), 1)
    for category in (Category.PARAMETER, Category.OPTIMIZER_STATE):
        ratio = fsdp.peak.by_category[category] / ddp.peak.by_category[category]
        assert 0.45 < ratio < 0.55, (category, ratio)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"engine": "ddp", "world": 2, "rank": 2}, "--rank 2 is not a rank"),
        ({"engine": "ddp", "world": 0}, "from 1 to 1024"),
        ({"engine": "ddp", "world": 2, "wrap": ("blocks.*",)}, "--fsdp-wrap is an FSDP2 option"),
        ({"engine": "fsdp", "world": 2, "bucket_cap_mb": 10.0}, "--bucket-cap-mb"),
        ({"engine": "fsdp", "world": 2, "param_dtype": "int8"}, "unknown --fsdp-param-dtype"),
    ],
)
def test_bad_options_are_one_line_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(MemtraceError, match=message):
        Parallel(**kwargs)


def test_wrap_globs_shard_outermost_matches_innermost_first() -> None:
    model = load_object(f"{MODELS}:lm")()
    assert fsdp_targets(model, ("blocks.*",)) == ["blocks.0", "blocks.1"]
    nested = fsdp_targets(model, ("blocks.*", "blocks.*.attn"))
    assert nested[:2] == ["blocks.0.attn", "blocks.1.attn"]
    with pytest.raises(MemtraceError, match="matches no module"):
        fsdp_targets(model, ("layers.*",))


def test_cli_reports_the_rank_and_communication() -> None:
    out = CliRunner().invoke(
        cli, [f"{MODELS}:lm", "--input", "4x64:int64", "--device", "cpu", "--fsdp", "2", "--rank", "1"]
    )
    assert out.exit_code == 0, out.output
    assert "fsdp 2 (rank 1" in out.output
    assert "communication" in out.output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ddp", "2", "--fsdp", "2"], "--ddp and --fsdp are two engines"),
        (["--rank", "1"], "--rank describes a data-parallel job"),
        (["--fsdp", "W"], "a symbolic world size is for fit and sweep"),
        (["--ddp", "2", "--cpu-offload"], "--cpu-offload is an FSDP2 option"),
    ],
)
def test_cli_refuses_bad_engine_flags(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([f"{MODELS}:lm", "--input", "4x64:int64", *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_fit_finds_the_smallest_world_size_that_fits() -> None:
    """W=1 peaks above 10 MB, W=2 below: fit stops at 2, and its figure is the simulation's at 2."""
    from memtrace.tracer.core.specs import parse_gpu, parse_headroom
    from memtrace.tracer.studies.fit import fit_world

    request = Request(
        f"{MODELS}:lm",
        (parse_input("1x64:int64"),),
        (),
        Config(device="cpu", parallel=Parallel("fsdp", "W")),  # the default wrap: auto, the blocks
    )
    found = fit_world(request, parse_gpu("10MB"), parse_headroom("0"))
    assert found.world == 2
    assert [w for w, _ in found.probes] == [1, 2]
    assert found.probes[0][1] > 10_000_000 >= found.probes[1][1]
    at_two = Request(
        f"{MODELS}:lm",
        (parse_input("1x64:int64"),),
        (),
        Config(device="cpu", parallel=Parallel("fsdp", 2, wrap=("blocks.*",))),
    )
    assert run(at_two).peak_bytes == found.peak_bytes


def test_sweep_takes_the_world_size(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sweep", f"{MODELS}:lm", "--input", "2x64:int64", "--device", "cpu", "--fsdp", "W"]
    main([*args, "--fsdp-wrap", "blocks.*", "--set", "W=1,2", "--format", "json"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["values"] for r in rows] == [{"W": 1}, {"W": 2}]
    assert rows[1]["peak_bytes"] < rows[0]["peak_bytes"]


def test_cpu_offload_is_refused_on_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([f"{MODELS}:lm", "--input", "4x64:int64", "--fsdp", "2", "--cpu-offload"])
    assert exit_.value.code == 2
    assert "--cpu-offload is simulated on --device cpu only" in capsys.readouterr().err


def test_amp_applies_to_fake_tensors_on_the_cuda_target() -> None:
    """Autocast's emulation casts the fake CPU tensors of a data-parallel run as it casts meta ones: bf16
    saves DDP's rank as many activation bytes as it saves one process."""

    def activations(amp: str | None, parallel: Parallel | None) -> int:
        config = Config(device="cuda", parallel=parallel, recipe=Recipe(amp=amp))
        return run(Request(f"{MODELS}:lm", (parse_input("4x64:int64"),), (), config)).activation_peak

    ddp = Parallel("ddp", 2)
    saved = activations(None, ddp) - activations("bf16", ddp)
    assert saved > 0
    assert saved == activations(None, None) - activations("bf16", None)


def test_auto_wrap_shards_each_block_as_recipes_do() -> None:
    """No --fsdp-wrap means auto: `_no_split_modules` classes (HF), else the largest ModuleList's children."""
    lm = load_object(f"{MODELS}:lm")()
    assert fsdp_targets(lm, ()) == fsdp_targets(lm, ("auto",)) == fsdp_targets(lm, ("blocks.*",))
    assert fsdp_targets(lm, ("root",)) == []
    assert fsdp_targets(load_object(f"{MODELS}:cnn")(), ()) == []  # no block: the root alone
    llama = load_object(f"{ROOT}/benchmarks/models/hf_llama.py:build")(
        layers=3, hidden=64, heads=4, kv_heads=4
    )
    assert auto_wrap(llama)[0] == "each LlamaDecoderLayer (_no_split_modules)"
    assert fsdp_targets(llama, ()) == fsdp_targets(llama, ("model.layers.*",))


@pytest.mark.parametrize("wrap", [("root", "blocks.*"), ("auto", "blocks.*")])
def test_wrap_keywords_are_used_alone(wrap: tuple[str, ...]) -> None:
    with pytest.raises(MemtraceError, match="is a keyword used alone"):
        Parallel("fsdp", 2, wrap=wrap)


def test_fsdp_alone_on_a_hf_llama_is_the_per_layer_wrap() -> None:
    """`--fsdp 8` alone gives the peak of `--fsdp-wrap 'model.layers.*'`; `--fsdp-wrap root` keeps
    `fully_shard(model)` alone, which holds every layer's parameters unsharded at once."""
    llama = f"{ROOT}/benchmarks/models/hf_llama.py:build"
    sizes = (
        ("layers", 4),
        ("hidden", 128),
        ("heads", 4),
        ("kv_heads", 4),
        ("intermediate", 344),
        ("vocab", 256),
    )

    def result(wrap: tuple[str, ...]) -> Result:
        config = Config(device="cpu", parallel=Parallel("fsdp", 8, wrap=wrap))
        return run(Request(llama, (parse_input("input_ids=2x64:int64"),), sizes, config))

    auto, layers, root = result(()), result(("model.layers.*",)), result(("root",))
    assert auto.peak_bytes == layers.peak_bytes < root.peak_bytes
    assert "wrap auto" in auto.parallel and "wrap root" in root.parallel
    assert any("fully_shard each LlamaDecoderLayer (_no_split_modules) (4 modules" in n for n in auto.notes)
