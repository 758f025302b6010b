"""Print memtrace's --device cpu peak against the CPU allocator for every zoo model and recipe.

.venv/bin/python benchmarks/accuracy.py [--markdown] [NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*")
    parser.add_argument("--markdown", action="store_true")
    opts = parser.parse_args()

    from accuracy import RECIPES, compare
    from zoo import ZOO

    if opts.markdown:
        print("| model | mode | optimizer | predicted | measured | error |\n|---|---|---|---:|---:|---:|")
    for case in ZOO:
        if opts.names and case.name not in opts.names:
            continue
        for mode, optimizer in RECIPES:
            t0 = time.perf_counter()
            cmp = compare(case, mode, optimizer)
            dt = time.perf_counter() - t0
            opt = optimizer if mode == "train" else "-"
            err = f"{100 * cmp.error:+.4f}%"
            if opts.markdown:
                print(f"| {case.name} | {mode} | {opt} | {cmp.predicted:,} | {cmp.measured:,} | {err} |")
            else:
                line = f"{case.name:18s} {mode:5s} {opt:18s} {cmp.predicted:>12,} {cmp.measured:>12,}"
                print(f"{line} {err} ({dt:.1f}s)")


if __name__ == "__main__":
    main()
