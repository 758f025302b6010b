"""The decode loop's speed (issue 21): a 200-token gpt-fast generation of an 8B-shaped Llama (Llama 3.1's
shape, RoPE scaling, GQA, a static cache; a 128-token prompt) on the cuda target (`h100-80gb`), simulated
by the CLI in a fresh child process: its wall and CPU seconds and largest resident set; with `--full`, the
same command with decode replay switched off (every decode forward run), and whether the two JSON results
are the same but for the notes (the replay's note).

    .venv/bin/python benchmarks/decode_speed.py                 # replayed decode forwards
    .venv/bin/python benchmarks/decode_speed.py --full          # and the full simulation, compared
    .venv/bin/python benchmarks/decode_speed.py --step step     # 8 tokens (any step of gptfast_generate.py)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODEL = f"{HERE / 'models' / 'gptfast.py'}:build"
STEPS = HERE / "models" / "gptfast_generate.py"
CHILD = """
import sys
from memtrace.tracer.engine import decode_replay
decode_replay.ENABLED = sys.argv.pop(1) == "replay"
from memtrace.cli.main import main
sys.argv[0] = "memtrace"
sys.exit(main())
"""


def command(step: str, size: str) -> list[str]:
    return [
        MODEL, "--arg", f"size={size}", "--input", "1x128:int64", "--mode", "infer",
        "--step", f"{STEPS}:{step}", "--device", "cuda", "--gpu", "h100-80gb", "--json",
    ]  # fmt: skip


def timed(how: str, step: str, size: str) -> tuple[dict[str, Any], float, float, int]:
    """The child's JSON result, wall seconds, CPU seconds (user + system) and largest resident set (KiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, how, *command(step, size)], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{how}: exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return json.loads(done.stdout), wall, cpu, after.ru_maxrss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step", default="step_200", help="a step of gptfast_generate.py (default: step_200)")
    ap.add_argument("--size", default="8b", help="gptfast.py's size (default: 8b)")
    ap.add_argument("--full", action="store_true", help="also the full simulation, and compare the results")
    args = ap.parse_args()
    results = {}
    for how in ("replay", "full") if args.full else ("replay",):
        result, wall, cpu, rss = timed(how, args.step, args.size)
        notes = result.pop("notes")
        replayed = next((n for n in notes if "decode forwards replayed" in n), "no decode forward replayed")
        print(f"{how:6}  wall {wall:7.1f} s  cpu {cpu:7.1f} s  max rss {rss / 1024:6.0f} MiB  peak "
              f"{result['peak_bytes']:,} B  {replayed}")  # fmt: skip
        results[how] = result
    if args.full:
        print("results the same but for the notes:", results["replay"] == results["full"])


if __name__ == "__main__":
    main()
