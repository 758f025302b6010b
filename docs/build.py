"""Build the docs: run every command the pages show, then `mkdocs build --strict`.

    .venv/bin/python docs/build.py            # generate docs/generated/, build build/site (fails on warnings)
    .venv/bin/python docs/build.py --no-run   # reuse docs/generated/ (edit prose, rebuild in seconds)

Each `Job` is one command of the pages, run here as a user runs it; its stdout becomes
`docs/generated/NAME.md` (the command line and its output, as a code block) and the files it writes
(`--plot`, `--output`) land in `docs/generated/` too. The pages include them through the markers of
`docs/hooks.py`. Nothing in docs/generated/ is committed: the docs show what this commit's tool prints.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "docs" / "generated"
OUT = "docs/generated"  # as the commands name it, from the repository root
SEED = "benchmarks/models/seed_cnn.py:build"
GAP = "benchmarks/models/seed_cnn_gap.py:build"
HD = ("--arg", "h=1080", "--arg", "w=1920", "--input", "1x3x1080x1920")
ADAM1 = ("--optimizer", "adam:foreach=false")  # the single-tensor Adam of the first tutorial
GPT2 = (
    "benchmarks/models/hf_gpt2.py:build",
    *("--arg", "layers=4", "--arg", "hidden=768", "--arg", "heads=12", "--arg", "vocab=50257"),
    *("--arg", "positions=512", "--input", "input_ids=4x512:int64", "--input", "labels=4x512:int64"),
    *("--gpu", "rtx4070"),
)
README_MAIN = (SEED, *HD, "--gpu", "rtx4070")  # the README's main command (tests/test_docs.py checks it)
SMALL = (SEED, "--input", "8x3x144x256")  # the seed CNN at 256x144, batch 8: seconds to simulate
NANOGPT = (  # nanoGPT's train.py as a step: an autocast and a dtype decided at import, a logged loss
    "benchmarks/models/nanogpt.py:build",
    *("--arg", "layers=4", "--input", "8x1024:int64", "--input", "8x1024:int64"),
    *(
        "--step",
        "benchmarks/models/nanogpt_train.py:step",
        "--optimizer",
        "adamw:fused=true",
        "--gpu",
        "a100-40gb",
    ),
)
GENERATE = (  # a small Llama, a 4-token prompt and 48 new tokens: the cache grows to the peak
    "benchmarks/models/hf_llama.py:build",
    *("--arg", "hidden=64", "--arg", "heads=4", "--arg", "kv_heads=4", "--arg", "intermediate=128"),
    *("--arg", "vocab=128", "--input", "input_ids=1x4:int64", "--mode", "generate"),
    *("--max-new-tokens", "48", "--device", "cpu"),
)
OFFLOADED = (  # the small Llama of GENERATE, 4 layers, its cache offloaded to the host on an A100
    "benchmarks/models/hf_llama.py:build",
    *("--arg", "layers=4", "--arg", "hidden=64", "--arg", "heads=4", "--arg", "kv_heads=4"),
    *("--arg", "intermediate=128", "--arg", "vocab=128", "--input", "input_ids=1x4:int64"),
    *("--mode", "generate", "--max-new-tokens", "48", "--kv-cache", "offloaded"),
    *("--device", "cuda", "--gpu", "a100-80gb"),
)
VLM = (  # the seed's ~7B LLaVA answering two turns, the cache kept (docs/tutorial-vlm-serving.md)
    "benchmarks/models/hf_llava.py:seed",
    *("--input", "input_ids=1x626:int64", "--input", "pixel_values=1x3x336x336"),
    *("--input", "input_ids_2=1x676:int64", "--input", "pixel_values_2=1x3x336x336"),
    *("--dtype", "fp16", "--mode", "generate", "--step", "benchmarks/models/llava_turns.py:turns"),
    *("--gpu", "a100-40gb"),
)
SERVE = (  # a small Llama serving: 16 new tokens on a 1 GB budget (docs/generate.md)
    "benchmarks/models/hf_llama.py:build",
    *("--arg", "positions=2048", "--mode", "generate", "--max-new-tokens", "16", "--gpu", "1GB"),
)
FT = "benchmarks/models/hf_finetune.py:build"
QLORA_7B = (  # Llama-2-7B's shape, nf4 weights, LoRA r16 on every Linear, prepare_model_for_kbit_training
    *(FT, "--arg", "shape=llama2-7b", "--arg", "quant=nf4", "--arg", "rank=16"),
    *("--arg", "kbit=true", "--arg", "checkpointing=true"),
)
QLORA_TAIL = ("--optimizer", "adamw", "--gpu", "rtx4090")
LORA_8B = (  # Llama-3-8B's shape, bf16 weights, LoRA r16 on every Linear, each decoder layer sharded
    *(FT, "--arg", "shape=llama3-8b", "--arg", "rank=16", "--arg", "checkpointing=true"),
    *("--input", "input_ids=1x4096:int64", "--input", "labels=1x4096:int64", "--optimizer", "adamw"),
    *("--fsdp", "8", "--fsdp-wrap", "base_model.model.model.layers.*", "--gpu", "a100-40gb"),
)
PICTURES = ("--plot", f"{OUT}/exports-plot.png", "--html", f"{OUT}/exports-plot.html")
DIST = ("benchmarks/models/dist_models.py:lm", "--input", "4x64:int64", "--device", "cpu")
T1 = (SEED, *HD, "--gpu", "rtx4070")
RNN_TAGGER = ("benchmarks/models/lstm_tagger.py:build", "--input", "8x64:int64", "--loss", "ce")
CONV_BN = ("benchmarks/models/conv_bn.py:build", "--input", "8x3x64x64", "--device", "cpu")  # compile.md
LENGTHS_FILE = "benchmarks/models/compile_lengths.py"  # compile.md: a recompilation on new shapes
LENGTHS, LENGTHS_STEP = f"{LENGTHS_FILE}:build", f"{LENGTHS_FILE}:lengths"
T2_GPU = ("--gpu", "rtx4070")
PLOT_FIT = ("--plot", f"{OUT}/t2-fit.png")
SWEEP_TAIL = ("--gpu", "rtx4060", "--gpu", "rtx4070", "--plot", f"{OUT}/t2-sweep.png")


def outputs(name: str, plot: bool = False) -> tuple[str, ...]:
    """`--output` (and `--plot`) into docs/generated/, named after the job."""
    return ("--plot", f"{OUT}/{name}.png") * plot + ("--output", f"{OUT}/{name}.json")


@dataclass(frozen=True)
class Job:
    """One command whose output a page shows: `memtrace ARGS` (or `python ARGS`), run from the repo root."""

    name: str
    args: tuple[str, ...]
    program: str = "memtrace"

    def argv(self) -> list[str]:
        tool = ROOT / ".venv" / "bin" / self.program if self.program == "memtrace" else Path(sys.executable)
        return [str(tool), *self.args]

    def shown(self) -> str:
        return " ".join(shlex.quote(a) for a in (self.program, *self.args))

    def files(self) -> tuple[str, ...]:
        """The generated files this job writes: its output page and every OUT path among its arguments."""
        own = tuple(Path(a).name for a in self.args if a.startswith(f"{OUT}/"))
        return (f"{self.name}.md", *own)


JOBS: tuple[Job, ...] = (
    Job("gs-main", README_MAIN),
    Job("gs-show", ("show", f"{OUT}/t1-seed.json", "--layers")),  # after t1-seed (see LATER)
    Job("gs-gpus", ("gpus",)),
    Job("api-simulate", ("docs/examples/api_simulate.py",), program="python"),
    Job("t1-seed", (*T1, *ADAM1, "--diagnose", *outputs("t1-seed", plot=True))),
    Job("t1-bf16", (*T1, *ADAM1, "--dtype", "bf16", *outputs("t1-bf16"))),
    Job(
        "t1-fixed",
        (GAP, *HD[4:], "--gpu", "rtx4070", *ADAM1, "--amp", "bf16", *outputs("t1-fixed", plot=True)),
    ),
    Job(
        "t2-fit",
        ("fit", SEED, "--input", "Bx3x144x256", "--gpu", "rtx4070", "--target-batch", "2048", *PLOT_FIT),
    ),
    Job("t2-sweep", ("sweep", SEED, "--input", "Bx3x144x256", "--set", "B=1,8,64,128,256,512", *SWEEP_TAIL)),
    Job(
        "t2-accumulate",
        (SEED, "--input", "256x3x144x256", "--accumulate", "8", *T2_GPU, *outputs("t2-accumulate")),
    ),
    Job("t3-whatif", (*GPT2, "--what-if", *outputs("t3-whatif", plot=True))),
    Job("t3-amp", (*GPT2, "--amp", "bf16", *outputs("t3-amp"))),
    Job("t3-checkpoint", (*GPT2, "--checkpoint", "transformer.h.*", *outputs("t3-checkpoint", plot=True))),
    # The README's tour (its output blocks are cut from these: check_readme) and the guides' pages
    Job("readme-diagnose", (*README_MAIN, "--diagnose")),
    Job("layers-table", (*SMALL, "--layers", "--depth", "1")),
    Job("step-own", (*SMALL, "--step", "benchmarks/models/seed_step.py:step")),
    Job("step-nanogpt", NANOGPT),
    Job("recipes-whatif", (SEED, "--input", "256x3x144x256", "--what-if")),
    Job("compile-eager", (*CONV_BN, *outputs("compile-eager", plot=True))),
    Job("compile-cnn", (*CONV_BN, "--compile", *outputs("compile-cnn", plot=True))),
    Job("compile-lengths", (LENGTHS, "--input", "4x32x64", "--device", "cpu", "--step", LENGTHS_STEP)),
    Job("compile-cuda", (CONV_BN[0], "--input", "2x3x32x32", "--device", "cuda", "--compile")),
    Job("compile-layers", (CONV_BN[0], "--input", "2x3x32x32", "--device", "cpu", "--compile", "--layers")),
    Job("verify-cpu", ("verify", *SMALL, "--device", "cpu")),
    Job("gpu-rnn-range", (*RNN_TAGGER, "--device", "cuda", "--gpu", "600MB")),
    Job("ddp", (*DIST, "--ddp", "2")),
    Job("fsdp-auto", (*DIST, "--fsdp", "2")),
    Job(
        "finetune-qlora",
        (
            "benchmarks/models/hf_qlora.py:build",
            *("--input", "input_ids=2x64:int64", "--device", "cpu"),
            *("--optimizer", "bitsandbytes.optim:AdamW8bit"),
        ),
    ),
    Job(
        "finetune-paged",
        (
            "benchmarks/models/hf_qlora.py:build",
            *("--arg", "hidden=512", "--arg", "intermediate=1376", "--arg", "rank=256"),
            *("--input", "input_ids=2x64:int64", "--optimizer", "hf:paged_adamw_32bit", "--gpu", "rtx4090"),
        ),
    ),
    Job(
        "finetune-fsdp-qlora",
        (
            *("benchmarks/models/hf_qlora.py:build", "--arg", "quant_storage=bfloat16"),
            *("--arg", "kbit=false"),
            *("--input", "input_ids=2x64:int64", "--optimizer", "adamw"),
            *("--fsdp", "8", "--fsdp-param-dtype", "bf16", "--device", "cpu"),
        ),
    ),
    Job(
        "finetune-hf-args",
        (
            *("benchmarks/models/hf_qlora.py:build", "--hf-args", "docs/examples/qlora-args.json"),
            *("--device", "cpu"),
        ),
    ),
    Job(
        "ft-qlora-7b",
        (
            *QLORA_7B,
            "--input",
            "input_ids=1x2048:int64",
            "--input",
            "labels=1x2048:int64",
            *QLORA_TAIL,
            *outputs("ft-qlora-7b"),
        ),
    ),
    Job(
        "ft-qlora-batch",
        (
            "fit",
            *QLORA_7B,
            "--input",
            "input_ids=Bx2048:int64",
            "--input",
            "labels=Bx2048:int64",
            *QLORA_TAIL,
        ),
    ),
    Job(
        "ft-qlora-seq",
        (
            "fit",
            *QLORA_7B,
            "--input",
            "input_ids=1xS:int64",
            "--input",
            "labels=1xS:int64",
            *QLORA_TAIL,
        ),
    ),
    Job("ft-lora-fsdp", (*LORA_8B, *outputs("ft-lora-fsdp"))),
    Job("moe", ("benchmarks/models/hf_moe.py:mixtral", "--input", "input_ids=2x64:int64", "--device", "cpu")),
    Job("exports-plot", (*SMALL, "--gpu", "rtx4070", *PICTURES)),
    Job("generate", (*GENERATE, "--plot", f"{OUT}/generate-plot.png")),
    Job("generate-verify", ("verify", *GENERATE)),
    Job("generate-offloaded", OFFLOADED),
    Job("serve-fit-batch", ("fit", *SERVE, "--input", "input_ids=Bx1024:int64")),
    Job("serve-fit-prompt", ("fit", *SERVE, "--input", "input_ids=4xS:int64")),
    Job(
        "serve-sweep",
        (
            *("sweep", *SERVE, "--input", "input_ids=4xS:int64", "--set", "S=128,512,1024,2032"),
            *("--plot", f"{OUT}/serve-sweep.png"),
        ),
    ),
    Job("vlm-two-turns", (*VLM, *outputs("vlm-two-turns", plot=True))),
    Job("vlm-multipliers", ("docs/examples/vlm_turns.py",), program="python"),
    Job(
        "bench-suite",
        ("bench", "seed_cnn_256", "lstm_tagger", "unet_small", "--device", "cuda", "--no-measure"),
    ),
)
# What the prose says in words rather than through a marker: the build fails when the tool stops saying it.
CLAIMS: tuple[tuple[str, str, object], ...] = (
    # "with PyTorch's default Adam the step is borderline: ... cuDNN's workspace" (a text: contained)
    ("gs-main.md", "", "cuDNN's convolution workspace"),
    ("t1-seed.json", "verdict.fits", False),  # "runs out of memory"
    ("t1-seed.json", "peak.phase", "optimizer"),  # "the red spike in the optimizer phase"
    ("t1-seed.json", "diagnosis.fixes.change~bf16.saved_bytes", 0),  # autocast "saves nothing" at this peak
    ("t1-seed.json", "diagnosis.fixes.change~checkpoint.saved_bytes", 0),  # "saves nothing either"
    ("t1-bf16.json", "verdict.fits", True),  # "it fits"
    ("t1-fixed.json", "peak.phase", "backward"),  # the activations now set the peak
    ("t3-whatif.json", "peak.op", "_log_softmax_backward_data"),  # the loss, not the blocks, sets the peak
    ("t3-checkpoint.json", "peak.op", "_log_softmax_backward_data"),  # "still the loss's"
    ("t3-amp.json", "peak.top_tensors.0.dtype", "float32"),  # the loss's tensors stay fp32 under autocast
    ("step-nanogpt.md", "", "answered for a100-40gb (sm80)"),  # "your code sees the target GPU"
    ("step-nanogpt.md", "", "logged: .item() at benchmarks/models/nanogpt_train.py"),  # "read as 0.0"
    ("serve-fit-prompt.md", "", "stops it there, not the GPU"),  # "that bound, not the GPU, stops it"
    ("vlm-two-turns.json", "peak.token_index", 1),  # "the second turn is decode step 1"
    ("vlm-multipliers.md", "", "328.20 MB     682.62 MB       2.08x"),  # the cache: 328 MB, 683 MB, 2.08x
    ("vlm-multipliers.md", "", "1.03x"),  # "the whole peak ... grows by 3%"
    ("ft-qlora-7b.json", "verdict.fits", True),  # "a micro-batch of one 2048-token sequence fits"
    ("ft-lora-fsdp.json", "verdict.fits", True),  # "fits each A100 40GB"
)
LATER = ("gs-show",)
SOURCES = {
    "api-simulate-source.md": "docs/examples/api_simulate.py",
    "vlm-turns-source.md": "docs/examples/vlm_turns.py",
    "llava-turns-source.md": "benchmarks/models/llava_turns.py",
}  # jobs that read another job's output: run after the others


def run_job(job: Job) -> tuple[Job, float]:
    """Run one job and write its page: `$ command`, then stdout (trailing spaces dropped)."""
    start = time.perf_counter()
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "160"}
    done = subprocess.run(job.argv(), cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"docs: {job.shown()} exited {done.returncode}:\n{done.stderr[-2000:]}")
    text = "\n".join(line.rstrip() for line in done.stdout.rstrip("\n").splitlines())
    (GENERATED / f"{job.name}.md").write_text(f"```\n$ {job.shown()}\n{text}\n```\n")
    return job, time.perf_counter() - start


def check_claims() -> None:
    sys.path.insert(0, str(ROOT / "docs"))
    import hooks

    for name, key, expected in CLAIMS:
        if name.endswith(".md"):
            if str(expected) not in (GENERATED / name).read_text():
                raise SystemExit(f"docs: the prose says {name} shows {expected!r}; it no longer does")
            continue
        found = hooks.lookup(GENERATED, name, key)
        if found != expected:
            raise SystemExit(
                f"docs: the prose says {name}:{key} is {expected!r}, the tool now says {found!r}"
            )


# An output block of the README: "$ memtrace ..." (a Job's command as shown), then lines cut from its output.
OUTPUT_BLOCK = re.compile(r"^```\n\$ (memtrace [^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def readme_outputs(text: str | None = None) -> list[tuple[str, list[str]]]:
    """The README's output blocks: the command as shown, and the lines it shows of the output."""
    text = (ROOT / "README.md").read_text() if text is None else text
    return [(m[1], m[2].splitlines()) for m in OUTPUT_BLOCK.finditer(text)]


def excerpt_gap(excerpt: Sequence[str], output: Sequence[str]) -> str | None:
    """The first line of `excerpt` that is not a faithful cut of `output` (None when all are).

    `...` stands for output lines left out. Every other line must begin (trailing spaces dropped) the output
    line right after the previous one matched, or any later one after a `...`; the first line is the
    output's first unless a `...` precedes it.
    """
    lines = [line.rstrip() for line in output]
    at, skip = 0, False
    for want in (w.rstrip() for w in excerpt):
        if want == "...":
            skip = True
            continue
        candidates = range(at, len(lines) if skip else min(at + 1, len(lines)))
        found = [i for i in candidates if (lines[i].startswith(want) if want else not lines[i])]
        if not found:
            return want
        at, skip = found[0] + 1, False
    return None


def job_output(name: str) -> list[str]:
    """What a generated job page shows as the command's output (the lines after `$ command`)."""
    lines = (GENERATED / f"{name}.md").read_text().splitlines()
    return lines[2:-1]  # ```, $ command, ..., ```


def check_readme() -> None:
    """The README's output blocks are cut from what the Jobs running their commands print now."""
    jobs = {job.shown(): job for job in JOBS}
    for command, excerpt in readme_outputs():
        job = jobs.get(command)
        if job is None:
            raise SystemExit(f"docs: the README shows the output of `{command}`, which no Job runs")
        gap = excerpt_gap(excerpt, job_output(job.name))
        if gap is not None:
            raise SystemExit(
                f"docs: the README's output of `{command}` shows {gap!r}, which the tool no longer prints "
                f"there (docs/generated/{job.name}.md has what it prints)"
            )


def readme_commands() -> str:
    """The README's "The two commands" section, as the getting-started page shows it."""
    text = (ROOT / "README.md").read_text()
    start = text.index("## The two commands")
    section = text[start : text.index("\n## ", start + 1)]
    return section.split("\n", 1)[1].strip() + "\n"


def write_references() -> None:
    sys.path.insert(0, str(ROOT / "docs"))
    import reference

    from memtrace.cli.main import cli

    (GENERATED / "cli.md").write_text(reference.cli_markdown(cli))
    (GENERATED / "api.md").write_text(reference.api_markdown())
    (GENERATED / "readme-commands.md").write_text(readme_commands())
    for name, source in SOURCES.items():  # files a page shows whole
        (GENERATED / name).write_text(f"```python\n{(ROOT / source).read_text()}```\n")
    import architecture_graph  # the rooms and their imports, read from the code

    modules, edges = architecture_graph.room_edges()
    architecture_graph.draw(edges, GENERATED / "architecture.png")
    (GENERATED / "architecture.md").write_text(architecture_graph.table(modules, edges) + "\n")


def generate(jobs: Sequence[Job], workers: int) -> None:
    GENERATED.mkdir(parents=True, exist_ok=True)
    write_references()
    first = [j for j in jobs if j.name not in LATER]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for job, seconds in pool.map(run_job, first):
            print(f"docs: {job.name} {seconds:.1f} s", file=sys.stderr)
    for job in (j for j in jobs if j.name in LATER):
        print(f"docs: {job.name} {run_job(job)[1]:.1f} s", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the docs' outputs and build the site (strict).")
    parser.add_argument("--no-run", action="store_true", help="reuse docs/generated/ as it is")
    parser.add_argument("--no-site", action="store_true", help="generate only; no mkdocs build")
    parser.add_argument("--workers", type=int, default=2, help="commands run at once (default 2)")
    parser.add_argument("--job", action="append", default=[], help="run only this job (repeatable)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if not args.no_run:
        generate([j for j in JOBS if not args.job or j.name in args.job], args.workers)
    check_claims()
    check_readme()
    if not args.no_site:
        mkdocs = [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
        ]
        if subprocess.run(mkdocs, cwd=ROOT, check=False).returncode != 0:
            return 1
    print(f"docs: built in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
