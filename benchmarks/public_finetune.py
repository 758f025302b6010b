"""Public fine-tuning memory figures, re-simulated: litgpt's resource tables and config hub, PEFT's MetaMathQA
method comparison. Each row is one `memtrace` command (printed), its figure set beside the published one.

.venv/bin/python benchmarks/public_finetune.py                 # every case, a markdown table on stdout
.venv/bin/python benchmarks/public_finetune.py --case litgpt-llama2-7b-lora

The published runs are on GPUs and in other libraries (litgpt's own GPT class): the models here are
Hugging Face's with PEFT adapters on the same layers, rank, alpha and dropout (models/hf_finetune.py);
benchmarks/results/public-finetune.md says what differs, case by case.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILDER = "benchmarks/models/hf_finetune.py:build"
QV = "q_proj,v_proj"


@dataclass(frozen=True)
class Case:
    """One published figure and the memtrace command that re-simulates its run."""

    name: str
    source: str  # where the figure is published
    published: float  # bytes
    figure: str  # "allocated" (max_memory_allocated) or "reserved" (memory_reserved)
    args: tuple[str, ...]

    def command(self) -> list[str]:
        return ["memtrace", BUILDER, *self.args]


def _litgpt(shape: str, batch: int, seq: int, rank: int, alpha: int, *extra: str) -> tuple[str, ...]:
    """litgpt's finetune/lora.py: LoRA on the query and value projections, dropout 0.05, bf16-true (the
    adapters in bf16 too), AdamW (foreach), the longest sequence of the data set in every row of the batch,
    litgpt's step (the head and the loss in chunks of 128 positions: models/litgpt_step.py); phi's GELU
    fused as litgpt runs it."""
    builder = ("shape", shape), ("targets", QV), ("rank", rank), ("alpha", alpha), ("dropout", 0.05)
    act = ("--arg", "act=gelu_pytorch_tanh") if shape.startswith("phi") else ()
    return (
        *act,
        *(a for key, value in builder for a in ("--arg", f"{key}={value}")),
        *("--arg", "adapter_dtype=bfloat16", *extra),
        *("--input", f"input_ids={batch}x{seq}:int64", "--input", f"labels={batch}x{seq}:int64"),
        *("--optimizer", "adamw", "--step", "benchmarks/models/litgpt_step.py:step"),
    )


A100 = ("--gpu", "a100-40gb")
A10G = ("--gpu", "a10")  # the A10G is an A10 (sm86) with 24 GB; the figure compared does not depend on it
NF4 = ("--arg", "quant=nf4")
RESOURCE_TABLES = "litgpt tutorials/resource-tables.md (A100 40GB, torch 2.1, max_memory_allocated)"
CONFIG_HUB = "litgpt config_hub/finetune/README.md (A10G, seq 512)"
METAMATH = "peft method_comparison/MetaMathQA/results (L40S, torch 2.7.1, memory_reserved)"
METAMATH_STEP = ("--step", "benchmarks/models/peft_metamath_step.py:step", "--gpu", "l40s")


def _metamath(rank: int, alpha: int, targets: str, *extra: str) -> tuple[str, ...]:
    """PEFT's run.py: bf16 weights, fp32 adapters (autocast_adapter_dtype), batch 4 at the maximum length 768,
    labels, AdamW(weight_decay=0.1) (foreach), clip_grad_norm_(1.0)."""
    builder = ("shape", "llama3.2-3b"), ("targets", targets), ("rank", rank), ("alpha", alpha)
    return (
        *(a for key, value in builder for a in ("--arg", f"{key}={value}")),
        *extra,
        *("--input", "input_ids=4x768:int64", "--input", "labels=4x768:int64"),
        *("--optimizer", "adamw:weight_decay=0.1", *METAMATH_STEP),
    )


CASES: tuple[Case, ...] = (
    Case(
        "litgpt-llama2-7b-lora",
        RESOURCE_TABLES,
        21.30e9,
        "allocated",
        (*_litgpt("llama2-7b", 1, 1304, 8, 16), *A100),
    ),
    Case(
        "litgpt-llama2-7b-qlora",
        RESOURCE_TABLES,
        14.14e9,
        "allocated",
        (*_litgpt("llama2-7b", 1, 1304, 8, 16, *NF4), *A100),
    ),
    Case(
        "litgpt-phi15-lora-mb1",
        RESOURCE_TABLES,
        4.82e9,
        "allocated",
        (*_litgpt("phi-1.5", 1, 1044, 8, 16), *A100),
    ),
    Case(
        "litgpt-phi15-lora-mb2",
        RESOURCE_TABLES,
        6.76e9,
        "allocated",
        (*_litgpt("phi-1.5", 2, 1044, 8, 16), *A100),
    ),
    Case(
        "litgpt-phi15-lora-mb4",
        RESOURCE_TABLES,
        10.68e9,
        "allocated",
        (*_litgpt("phi-1.5", 4, 1044, 8, 16), *A100),
    ),
    Case(
        "litgpt-llama3-8b-lora",
        CONFIG_HUB,
        19.73e9,
        "allocated",
        (*_litgpt("llama3-8b", 1, 512, 32, 16), *A10G),
    ),
    Case(
        "litgpt-llama3-8b-qlora",
        CONFIG_HUB,
        17.41e9,
        "allocated",
        (*_litgpt("llama3-8b", 2, 512, 32, 16, *NF4), *A10G),
    ),
    Case("peft-metamath-lora-r32", METAMATH, 22_273_851_392, "reserved", _metamath(32, 64, QV)),
)


def simulate(case: Case) -> dict[str, object]:
    """Run the case's command; its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        memtrace = ROOT / ".venv" / "bin" / "memtrace"
        argv = [str(memtrace), *case.command()[1:], "--output", str(out)]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{case.name}: exit {done.returncode}: {done.stderr[-1500:]}")
        result: dict[str, object] = json.loads(out.read_text())
        return result


def figure(result: dict[str, object], which: str) -> int:
    cuda = result["cuda"]
    assert isinstance(cuda, dict)
    return int(cuda["allocated_peak_bytes" if which == "allocated" else "reserved_peak_bytes"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", default=[], help="run only this case (repeatable)")
    args = parser.parse_args(argv)
    chosen = [c for c in CASES if not args.case or c.name in args.case]
    print("| case | published | figure | simulated | error |")
    print("|---|---:|---|---:|---:|")
    for case in chosen:
        print(" ".join(case.command()), file=sys.stderr)
        simulated = figure(simulate(case), case.figure)
        error = (simulated - case.published) / case.published
        print(
            f"| {case.name} | {case.published / 1e9:.2f} GB | {case.figure} | {simulated / 1e9:.2f} GB | "
            f"{error:+.1%} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
