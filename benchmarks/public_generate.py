"""Public generation memory figures, re-simulated: Hugging Face's `llm_tutorial_optimization.md` runs
bigcode/octocoder (15.5B, GPTBigCode with multi-query attention) on an A100 80GB through
`pipeline("text-generation")(prompt, max_new_tokens=60)` and prints `torch.cuda.max_memory_allocated()` after
each run. Each row is one `memtrace --mode generate` command (printed), its simulated
`max_memory_allocated` beside the published one.

.venv/bin/python benchmarks/public_generate.py                    # every case, a markdown table on stdout
.venv/bin/python benchmarks/public_generate.py --case bf16-short
.venv/bin/python benchmarks/public_generate.py --small            # the same pipeline on a tiny model (tests)

The prompts are not tokenized here (no download): the short prompt is 20 tokens, as the tutorial's own
key-value-cache loop prints for it; the long prompt's length is an estimate from its text (LONG_PROMPT).
benchmarks/results/public-generate.md says what differs from the published runs.
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
BUILDER = "benchmarks/models/hf_bigcode.py:build"
SOURCE = "transformers docs/source/en/llm_tutorial_optimization.md (A100 80GB, max_memory_allocated)"
GIB = 2**30
# "Question: ... Giga bytes.\n\nAnswer:": the tutorial's key-value-cache loop prints a cache of 20 after it
SHORT_PROMPT = 20
# 10 copies of the system prompt (1,994 characters each: prose, `-----` rules and indented Python) and the
# question with " Here": about 520 tokens a copy, between 1,994 / 4.45 (the short prompt's characters per
# token) = 448 and one token a word or punctuation mark with a newline or indent each (~600), plus 21
LONG_PROMPT = 10 * 520 + 21
NEW_TOKENS = 60
# transformers of 2023 computed the logits of every prompt position (no `logits_to_keep`): asked for here
FULL_LOGITS = ("--generate-arg", "logits_to_keep=0")
SMALL = tuple(
    a for kv in ("layers=2", "hidden=64", "heads=4", "inner=256", "vocab=128") for a in ("--arg", kv)
)


@dataclass(frozen=True)
class Case:
    """One published figure (GiB as the tutorial prints it) and the memtrace command that re-simulates it."""

    name: str
    published_gib: float
    prompt: int
    args: tuple[str, ...]

    def command(self, small: bool = False) -> list[str]:
        prompt, tokens = (8, 4) if small else (self.prompt, NEW_TOKENS)
        return [
            "memtrace", BUILDER, *self.args, *(SMALL if small else ()),
            "--input", f"input_ids=1x{prompt}:int64", "--mode", "generate", "--max-new-tokens", str(tokens),
            *FULL_LOGITS, "--device", "cuda", "--gpu", "a100-80gb",
        ]  # fmt: skip


FLASH = ("--sdpa-backend", "flash")
EAGER = ("--arg", "attn=eager")  # the tutorial's first runs: GPTBigCode's own attention (it had no SDPA yet)
CASES: tuple[Case, ...] = (
    Case("bf16-short", 29.0260648727417, SHORT_PROMPT, EAGER),
    Case("int8-short", 15.219234466552734, SHORT_PROMPT, (*EAGER, "--arg", "quant=int8")),
    Case("4bit-short", 9.543574333190918, SHORT_PROMPT, (*EAGER, "--arg", "quant=fp4")),
    Case("bf16-long-eager", 37.668193340301514, LONG_PROMPT, EAGER),
    # BetterTransformer and `sdp_kernel(enable_flash=True)` only: SDPA's flash kernel
    Case("bf16-long-flash", 32.617331981658936, LONG_PROMPT, ("--arg", "attn=sdpa", *FLASH)),
)


def simulate(case: Case, small: bool = False, in_process: bool = False) -> dict[str, object]:
    """Run the case's command (in a child process, or in this one: tests); its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        argv = [*case.command(small)[1:], "--output", str(out)]
        if in_process:
            from memtrace.cli.main import main as memtrace

            code = memtrace(argv)
            if code:
                raise SystemExit(f"{case.name}: exit {code}")
        else:
            memtrace_bin = Path(sys.executable).with_name("memtrace")
            done = subprocess.run([str(memtrace_bin), *argv], cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{case.name}: exit {done.returncode}: {done.stderr[-1500:]}")
        result: dict[str, object] = json.loads(out.read_text())
        return result


def allocated(result: dict[str, object]) -> int:
    cuda = result["cuda"]
    assert isinstance(cuda, dict)
    return int(cuda["allocated_peak_bytes"])


def row(case: Case, simulated: int) -> str:
    error = (simulated / GIB - case.published_gib) / case.published_gib
    return (
        f"| {case.name} | {case.prompt} | {case.published_gib:.3f} GiB | {simulated / GIB:.3f} GiB "
        f"({simulated:,} B) | {error:+.2%} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", default=[], help="run only this case (repeatable)")
    parser.add_argument("--small", action="store_true", help="a tiny model of the same pipeline (tests)")
    args = parser.parse_args(argv)
    chosen = [c for c in CASES if not args.case or c.name in args.case]
    if not chosen:
        raise SystemExit(f"no case named {args.case}: {', '.join(c.name for c in CASES)}")
    print("| case | prompt tokens | published | simulated | error |")
    print("|---|---:|---:|---:|---:|")
    for case in chosen:
        print(" ".join(case.command(args.small)), file=sys.stderr)
        print(row(case, allocated(simulate(case, args.small))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
