"""`memtrace verify --device cuda` over the zoo, the seed CNN, Hugging Face models, SDPA probes and
torchvision models, each case in a fresh process (its own caching allocator), several at a
time on the one GPU; then the groups of gpu_groups.py: gen/ (issue 21), qlora/ (issue 22), compile/ (23).

python benchmarks/gpu/verify_cases.py --out DIR [--jobs 8] [--filter TEXT] [--list] [--name verify]
python benchmarks/gpu/verify_cases.py --out DIR --device cpu --filter gen/gpt2   # a dry run here

A case whose module is missing (bitsandbytes) or that needs CUDA is a row with its one-line `skipped`.
Writes DIR/verify.jsonl (one object per case: its flags, the checks, the environment) and DIR/verify.md
(the table). A case that fails to run is a row with its one-line error. Allocator statistics are per
process, so cases running side by side on one GPU do not disturb each other's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks" / "models"))

ZOO_NAMES = (
    "mlp",
    "seed_cnn",
    "resnet_block",
    "depthwise",
    "transformer_mha",
    "transformer_sdpa",
    "lstm",
    "tied",
    "frozen",
    "frozen_middle",
    "dict_output",
    "tuple_output",
    "groupnorm_unet",
)
RECIPES = {
    "adamw": ["--optimizer", "adamw"],
    "bf16-adamw": ["--amp", "bf16", "--optimizer", "adamw"],
    "infer": ["--mode", "infer"],
}
M = "benchmarks/models/"


@dataclass(frozen=True)
class Case:
    """`needs`: modules the case imports (a clean one-line skip where one is missing); `cuda_only`: skipped
    off CUDA (a figure the CPU cannot show); `side`: run through side_measure.py, which also records the
    simulation's cuda.host_bytes / managed_bytes / compiled_range and what the real run held of them."""

    name: str
    flags: tuple[str, ...]
    snapshot: bool = False
    needs: tuple[str, ...] = ()
    cuda_only: bool = False
    side: bool = False


def _zoo() -> list[Case]:
    from zoo_case import input_flags

    cases = []
    for name in ZOO_NAMES:
        for recipe, flags in RECIPES.items():
            model = [f"{M}zoo_case.py:build", "--arg", f"name={name}", *input_flags(name)]
            cases.append(Case(f"zoo/{name}/{recipe}", (*model, *flags)))
    return cases


def _sdpa(name: str, *args: str, infer: bool = False, snapshot: bool = False) -> Case:
    flags = [f"{M}sdpa_probe.py:build", "--input", "1:bfloat16", "--optimizer", "sgd"]
    for a in args:
        flags += ["--arg", a]
    return Case(f"sdpa/{name}", (*flags, *(["--mode", "infer"] if infer else [])), snapshot)


def _models() -> list[Case]:
    seed = f"{M}seed_cnn.py:build"
    gpt2 = f"{M}hf_gpt2.py:build"
    llama = f"{M}hf_llama.py:build"
    tv = f"{M}torchvision_models.py:build"
    return [
        Case("seed/1080p-b1-adam", (seed, "--arg", "h=1080", "--arg", "w=1920", "--input", "1x3x1080x1920")),
        Case("seed/144x256-b8-adam", (seed, "--input", "8x3x144x256")),
        Case(
            "seed/144x256-b64-bf16-ckpt",
            (seed, "--input", "64x3x144x256", "--amp", "bf16", "--checkpoint", "conv*"),
        ),
        Case("gpt2/8x256-adamw", (gpt2, "--input", "input_ids=8x256:int64", "--optimizer", "adamw")),
        Case("gpt2/8x256-bf16", (gpt2, "--input", "input_ids=8x256:int64", "--amp", "bf16")),
        Case("llama/1x1024-bf16", (llama, "--input", "input_ids=1x1024:int64", "--amp", "bf16")),
        Case("llama/1x4096-bf16", (llama, "--input", "input_ids=1x4096:int64", "--amp", "bf16")),
        Case(
            "llama/1x4096-bf16-math",
            (llama, "--input", "input_ids=1x4096:int64", "--amp", "bf16", "--sdpa-backend", "math"),
        ),
        Case(
            "llama/4x1024-infer",
            (llama, "--input", "input_ids=4x1024:int64", "--mode", "infer", "--dtype", "bf16"),
        ),
        _sdpa("flash-1x32x4096x128", "heads=32", "seq=4096", "dim=128", snapshot=True),
        _sdpa("gqa8-1x32x4096x128", "heads=32", "kv_heads=8", "seq=4096", "dim=128", snapshot=True),
        _sdpa("fp32-1x8x2048x64", "heads=8", "seq=2048", "dim=64", "dtype=float32"),
        _sdpa("boolmask-1x8x2048x64", "heads=8", "seq=2048", "dim=64", "mask=true", snapshot=True),
        _sdpa("hd256-1x8x2048x256", "heads=8", "seq=2048", "dim=256"),
        _sdpa("dropout-1x16x2048x128", "heads=16", "seq=2048", "dim=128", "dropout=0.1"),
        _sdpa(
            "splitkv-infer-1x8x64x4096",
            "heads=8",
            "seq=64",
            "kv_seq=4096",
            "dim=64",
            "causal=false",
            infer=True,
        ),
        _sdpa(
            "mqa-fp32-mask-gqa", "heads=8", "kv_heads=1", "seq=1024", "dim=64", "dtype=float32", "mask=true"
        ),
        Case("tv/resnet18-b32", (tv, "--arg", "name=resnet18", "--input", "32x3x224x224")),
        Case("tv/resnet50-b32", (tv, "--arg", "name=resnet50", "--input", "32x3x224x224")),
        Case(
            "tv/resnet50-b64-bf16", (tv, "--arg", "name=resnet50", "--input", "64x3x224x224", "--amp", "bf16")
        ),
        Case(
            "tv/mobilenet_v3_large-b32", (tv, "--arg", "name=mobilenet_v3_large", "--input", "32x3x224x224")
        ),
        Case("tv/efficientnet_b0-b32", (tv, "--arg", "name=efficientnet_b0", "--input", "32x3x224x224")),
        Case(
            "tv/convnext_tiny-b16-bf16",
            (tv, "--arg", "name=convnext_tiny", "--input", "16x3x224x224", "--amp", "bf16"),
        ),
        Case(
            "tv/vit_b_16-b16-bf16", (tv, "--arg", "name=vit_b_16", "--input", "16x3x224x224", "--amp", "bf16")
        ),
    ]


def all_cases() -> list[Case]:
    """The suite (issue 24's table), then the groups of issues 23 (compile/), 22 (qlora/) and 21 (gen/): the
    compiled steps first, as they take longest (compiling), so a pool of jobs finishes sooner."""
    from gpu_groups import compile_cases, generate_cases, qlora_cases

    return [*_models(), *_zoo(), *compile_cases(), *qlora_cases(), *generate_cases()]


def skip_reason(case: Case, device: str) -> str:
    """Why the case cannot run here ('' when it can): one line."""
    import importlib.util

    if case.cuda_only and device != "cuda":
        return "skipped: CUDA only (its figure is outside the CPU allocator)"
    missing = [m for m in case.needs if importlib.util.find_spec(m) is None]
    return f"skipped: {', '.join(missing)} not installed (see benchmarks/gpu/README.md)" if missing else ""


def _command(case: Case, out: Path, device: str = "cuda") -> list[str]:
    runner = [str(Path(__file__).with_name("side_measure.py"))] if case.side else ["-m", "memtrace.cli.main"]
    cmd = [sys.executable, *runner, "verify", *case.flags, "--device", device, "--json"]
    cmd += ["--tolerance", "99%"]
    if case.snapshot and device == "cuda":
        cmd += ["--snapshot", str(out / ("snap_" + case.name.replace("/", "_") + ".pickle"))]
    return cmd


def run_case(case: Case, out: Path, timeout: float, device: str) -> dict[str, object]:
    t0 = time.perf_counter()
    row: dict[str, object] = {"case": case.name, "flags": list(case.flags)}
    if reason := skip_reason(case, device):
        return {**row, "skipped": reason}
    try:
        proc = subprocess.run(
            _command(case, out, device),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            env=os.environ,
        )
    except subprocess.TimeoutExpired:
        return {**row, "error": f"timed out after {timeout:.0f} s"}
    row["seconds"] = round(time.perf_counter() - t0, 1)
    try:
        row.update(json.loads(proc.stdout))
    except json.JSONDecodeError:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        row["error"] = lines[-1] if lines else f"exit {proc.returncode}, no output"
    return row


def _environment() -> dict[str, object]:
    import torch

    env: dict[str, object] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            sms=props.multi_processor_count,
            total_memory=props.total_memory,
            cudnn=torch.backends.cudnn.version(),
        )
    return env


def _markdown(rows: list[dict[str, object]], env: dict[str, object]) -> str:
    head = ", ".join(f"{k} {v}" for k, v in env.items())
    lines = [
        f"# memtrace verify --device cuda ({head})",
        "",
        "| case | figure | predicted | measured | error |",
        "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        if "error" in row or "skipped" in row:
            what = "failed" if "error" in row else "skipped"
            lines.append(f"| {row['case']} | {what} | | | {row.get('error') or row['skipped']} |")
            continue
        for c in row.get("checks", []):  # type: ignore[union-attr]
            err = "n/a" if c["error"] is None else f"{100 * c['error']:+.3f}%"
            lines.append(
                f"| {row['case']} | {c['figure']} | {c['predicted']:,} | {c['measured']:,} | {err} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument(
        "--filter", default="", help="cases whose name contains one of these (comma-separated)"
    )
    parser.add_argument("--exclude", default="", help="leave out cases whose name contains one of these")
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--name", default="verify", help="the output files' stem (DIR/NAME.jsonl, .md)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the cases on this machine")
    opts = parser.parse_args()
    wanted = opts.filter.split(",")
    unwanted = [w for w in opts.exclude.split(",") if w]
    cases = [c for c in all_cases() if any(w in c.name for w in wanted)]
    cases = [c for c in cases if not any(w in c.name for w in unwanted)]
    if opts.list:
        for c in cases:
            print(c.name, " ".join(c.flags))
        return
    opts.out.mkdir(parents=True, exist_ok=True)
    env = _environment()
    rows: list[dict[str, object]] = []
    with ThreadPoolExecutor(opts.jobs) as pool, (opts.out / f"{opts.name}.jsonl").open("w") as f:
        for row in pool.map(lambda c: run_case(c, opts.out, opts.timeout, opts.device), cases):
            row["env"] = env
            f.write(json.dumps(row) + "\n")
            f.flush()
            rows.append(row)
            got = row.get("error") or row.get("skipped") or [(c["figure"], c["error"]) for c in row["checks"]]
            print(row["case"], got, flush=True)
            (opts.out / f"{opts.name}.md").write_text(_markdown(rows, env))  # as it goes


if __name__ == "__main__":
    main()
