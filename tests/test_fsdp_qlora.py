"""FSDP2 with QLoRA as the recipes run it: 4-bit weights stored as `bnb_4bit_quant_storage` elements (bf16),
sharded by FSDP as any bf16 parameter, their quant state replicated on every rank, each unit's packed
weights gathered and dequantized per Linear at compute.

The per-rank figure is held against a real 2-rank gloo run of the same step (benchmarks/dist_reference.py,
as tests/test_distributed.py does) on bitsandbytes' CPU backend; DDP's too, and FSDP2 on the same Llama with
LoRA on plain bf16 and fp32 weights (its peak is an all-gather's: gloo's buffers, devices/cpu/gloo.py).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from memtrace.cli.main import main
from memtrace.tracer.core.parallel import Parallel
from memtrace.tracer.core.records import Category, Result, Trace
from memtrace.tracer.core.specs import parse_input, parse_optimizer, parse_tolerance
from memtrace.tracer.engine.loader import load_object
from memtrace.tracer.meta.compat_bnb import held_tensors, moving_quantizes
from memtrace.tracer.simulate import Config, Request, run, run_traced

pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parent.parent
QLORA = str(ROOT / "benchmarks" / "models" / "hf_qlora.py") + ":build"
INPUT = "input_ids=1x128:int64"
TOLERANCE = parse_tolerance("1%")
# (name, engine, builder args, --fsdp-param-dtype): the recipe (bf16 storage, bf16 mixed precision), with
# double quantization, bitsandbytes' default uint8 storage without mixed precision (FSDP2 gathers it uncast),
# DDP (which failed before as FSDP did: `Linear4bit` re-wraps the weight DDP leaves it), and LoRA on plain
# weights (no bitsandbytes), bf16 under bf16 mixed precision and fp32: their peak is layer 0's prefetched
# all-gather in layer 1's pre-backward, gloo's all-gather buffers on top.
CASES = [
    ("bf16-storage", "fsdp", {"quant_storage": "bfloat16"}, "bf16"),
    ("bf16-storage-double-quant", "fsdp", {"quant_storage": "bfloat16", "double_quant": True}, "bf16"),
    ("uint8-storage", "fsdp", {}, None),
    ("ddp", "ddp", {}, None),
    ("lora-bf16", "fsdp", {"quant": "none"}, "bf16"),
    ("lora-fp32", "fsdp", {"quant": "none", "compute_dtype": "float32"}, None),
]
BASE = {"device": "cpu", "kbit": False}  # quantized as the model moves; TRL skips kbit prep for FSDP-QLoRA
RANKS = (0, 1)

gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available in this PyTorch build: no real run to hold against",
)


def _simulate(
    args: dict[str, Any], param_dtype: str | None, world: int, rank: int, engine: str = "fsdp"
) -> Result:
    parallel = Parallel(engine, world, rank, param_dtype=param_dtype)
    config = Config(device="cpu", optimizer=parse_optimizer("adamw"), parallel=parallel)
    return run(Request(QLORA, (parse_input(INPUT),), tuple({**BASE, **args}.items()), config))


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], dict[str, Any]]:
    """Every case's per-rank figures from one real 2-rank gloo launch."""
    out = tmp_path_factory.mktemp("gloo")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += [str(ROOT / "benchmarks" / "dist_reference.py"), "--out", str(out)]
    for i, (_, engine, args, param_dtype) in enumerate(CASES):
        command += ([";"] if i else []) + [QLORA, "--input", INPUT, "--optimizer", "adamw"]
        command += ["--fsdp"] if engine == "fsdp" else []
        for key, value in {**BASE, **args}.items():
            command += ["--arg", f"{key}={value}"]
        command += ["--fsdp-param-dtype", param_dtype] if param_dtype else []
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        (name, rank): json.loads((out / f"case{i}-rank{rank}.json").read_text())
        for i, (name, *_) in enumerate(CASES)
        for rank in RANKS
    }


@gloo
@pytest.mark.slow
@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize(("name", "engine", "args", "param_dtype"), CASES, ids=[c[0] for c in CASES])
def test_qlora_rank_peak_against_gloo(
    measured: dict[tuple[str, int], dict[str, Any]],
    name: str,
    engine: str,
    args: dict[str, Any],
    param_dtype: str | None,
    rank: int,
) -> None:
    real = measured[(name, rank)]
    result = _simulate(args, param_dtype, 2, rank, engine)
    error = (result.peak_bytes - real["peak"]) / real["peak"]
    figures = f"{result.peak_bytes:,} vs {real['peak']:,} ({error:+.3%})"
    assert abs(error) <= TOLERANCE, f"{name} rank {rank}: {figures}"
    assert result.peak.by_category.get(Category.COMMUNICATION, 0) > 0


def test_4bit_weights_shard_as_quant_storage_elements() -> None:
    """On 3 ranks rank 0 holds ceil(rows / 3) rows of every parameter (FSDP2 pads its shard), the packed
    4-bit weights as bf16 storage elements ((n / 4, 1): four 4-bit values per bf16), and the whole quant
    state of every weight (absmax, code: not parameters, so not sharded)."""
    with torch.device("meta"), moving_quantizes():
        model = load_object(QLORA)(**BASE, quant_storage="bfloat16")
    packed = [p for n, p in model.named_parameters() if n.endswith("base_layer.weight")]
    assert packed and all(p.dtype == torch.bfloat16 and p.shape[1] == 1 for p in packed)
    assert all(p.shape[0] * 4 == p.quant_state.shape.numel() for p in packed)  # type: ignore[attr-defined]
    world = 3
    shards = sum(
        math.ceil(p.shape[0] / world) * (p.numel() // p.shape[0]) * p.element_size()
        for p in model.parameters()
    )
    states = sum(t.numel() * t.element_size() for t, _ in held_tensors(model))
    result = _simulate({"quant_storage": "bfloat16"}, "bf16", world, 0)
    assert result.peak.by_category[Category.PARAMETER] == shards + states


def test_storage_cast_by_fsdp_mixed_precision_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """fp32 storage under `--fsdp-param-dtype bf16`: FSDP would cast the packed codes as numbers (a real
    run fails in dequantize_4bit on the halved size)."""
    args = [QLORA, "--input", INPUT, "--device", "cpu", "--fsdp", "2", "--fsdp-param-dtype", "bf16"]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--arg", "quant_storage=float32"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "bnb_4bit_quant_storage" in err and len(err.strip().splitlines()) == 1


def _traced(engine: str | None, device: str = "cpu") -> tuple[Trace, Result]:
    parallel = Parallel(engine, 2, 0) if engine else None
    config = Config(device=device, optimizer=parse_optimizer("adamw"), parallel=parallel)
    args = (("quant", "none"), ("kbit", False))
    return run_traced(Request(QLORA, (parse_input(INPUT),), args, config))


def _saved(trace: Trace) -> list[tuple[tuple[int, ...], str, str]]:
    """The steady-state step's saved activations: (shape, dtype, op), in the order they were made."""
    return [
        (s.shape, s.dtype, s.op)
        for s in trace.storages.values()
        if s.category is Category.ACTIVATION and s.iteration == 1
    ]


def test_simulated_ranks_attend_as_one_process() -> None:
    """The ranks' fake tensors are answered as meta ones by transformers' tracing checks: SDPA skips the
    causal mask and runs GQA itself (`enable_gqa`), as the real ranks do, instead of saving key and value
    repeated to the query heads (`repeat_kv`'s copies: the 4-bit rows' +2.2% against gloo)."""
    one, _ = _traced(None)
    ranks, _ = _traced("ddp")
    assert _saved(ranks) == _saved(one)
    assert not [s for s in _saved(ranks) if s[2] == "clone"]


def test_gloo_buffers_only_on_the_cpu() -> None:
    """On the CPU each FSDP2 all-gather holds gloo's flat copies of the output (one at a time) and each
    reduce-scatter a clone of its input; NCCL on CUDA works in the caller's tensors."""
    trace, _ = _traced("fsdp")
    storages = trace.storages.values()
    gathered = [s.nbytes for s in storages if s.op == "empty" and s.category is Category.COMMUNICATION]
    copies = [s.nbytes for s in storages if s.op == "_allgather_base_"]
    clones = [s.nbytes for s in storages if s.op == "_reduce_scatter_base_" and s.nbytes > 8]
    assert copies and set(copies) <= set(gathered) and clones
    cuda, _ = _traced("fsdp", "cuda")
    assert not [s for s in cuda.storages.values() if s.op in ("_allgather_base_", "_reduce_scatter_base_")]
