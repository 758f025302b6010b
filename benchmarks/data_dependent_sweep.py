"""The data-dependent families through the command line, as a user runs them: MoE LMs (Mixtral, Qwen2-MoE),
a VLM (Llava) and torchvision's detectors, in training and inference. Each row is the simulated peak with
the default assumptions and how many choices were listed, or the one-line error and whether it names an
`--assume` key. Needs transformers and torchvision in the same venv (torch 2.14.1 with torchvision 0.29.1).

python benchmarks/data_dependent_sweep.py --output benchmarks/results/data-dependent-sweep.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MODELS = "benchmarks/models"
STEPS = {"train": "train_step", "infer": "infer_step"}
DETECTORS = [
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "maskrcnn_resnet50_fpn",
    "keypointrcnn_resnet50_fpn",
    "retinanet_resnet50_fpn",
    "fcos_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large",
]
LM = ["--input", "input_ids=2x64:int64"]
LLAVA = ["--input", "input_ids=2x80:int64", "--input", "pixel_values=2x3x32x32"]


def cases() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for mode in ("train", "infer"):
        for name, experts in (("mixtral", "eager"), ("mixtral", "grouped_mm"), ("qwen2_moe", "eager")):
            for recipe in ([], ["--amp", "bf16"], ["--dtype", "bf16"]):
                label = f"{name} ({experts}) {' '.join(recipe) or 'fp32'} {mode}"
                args = [f"{MODELS}/hf_moe.py:{name}", "--arg", f"experts={experts}", *LM, *recipe]
                found.append((label, [*args, "--mode", mode]))
        found.append((f"llava {mode}", [f"{MODELS}/hf_llava.py:build", *LLAVA, "--mode", mode]))
        for name in DETECTORS:
            step = f"{MODELS}/detection.py:{STEPS[mode]}"
            args = [f"{MODELS}/detection.py:build", "--arg", f"name={name}", "--input", "2x3x800x800"]
            found.append((f"{name} {mode}", [*args, "--step", step, "--mode", mode]))
    return found


def run(args: list[str], device: str) -> tuple[str, str, float]:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "memtrace.cli.main", *args, "--device", device, "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode == 0:
        data = json.loads(done.stdout)
        chosen = len(data["assumptions"])
        return f"{data['peak_bytes']:,}", f"runs; {chosen} choice{'s' * (chosen != 1)} listed", seconds
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("memtrace: error:")]
    error = lines[-1] if lines else (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    names_key = "--assume" in error
    return "-", f"{'one-line error naming --assume' if names_key else 'ERROR'}: {error[:160]}", seconds


def _version(module: str) -> str:
    try:
        return f"{module} {__import__(module).__version__}"
    except ImportError:
        return f"no {module}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--output", type=Path)
    options = parser.parse_args()
    rows = ["| case | peak (B) | outcome | s |", "|---|---:|---|---:|"]
    for label, args in cases():
        peak, outcome, seconds = run(args, options.device)
        rows.append(f"| {label} | {peak} | {outcome} | {seconds:.1f} |")
        print(rows[-1], flush=True)
    import torch

    others = ", ".join(_version(m) for m in ("torchvision", "transformers"))
    command = f"python benchmarks/data_dependent_sweep.py --device {options.device}"
    head = f"`{command}` (torch {torch.__version__}, {others}), defaults.\n\n"
    text = head + "\n".join(rows) + "\n"
    if options.output:
        options.output.write_text(text)


if __name__ == "__main__":
    main()
