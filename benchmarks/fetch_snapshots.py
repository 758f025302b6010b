"""Fill the local cache of public GPU memory snapshots, and print the allocator replay table.

The replay tests (tests/test_cuda_snapshot.py) read `torch.cuda.memory._dump_snapshot` pickles from
MEMTRACE_SNAPSHOT_CACHE (default ~/.cache/memtrace/snapshots) and skip without them. The snapshots
are not vendored: neither source repository has a licence file.

Sources:
- github.com/ailzhang/EfficientPyTorch: chapter_07_memory/traces/*.pickle (8 traces recorded from an
  empty allocator) and chapter_10_mingpt/memory_profiles/*.pickle (those stored in full).
- github.com/kkaitlyn111/cs336-a2-systems: memory_files/*.pickle (training steps of a 3.4B-parameter
  model; the traces start mid-run, after an empty_cache).

To fill the cache, clone both repositories (or point at bare git directories), then:

    python benchmarks/fetch_snapshots.py --source EfficientPyTorch=PATH --source cs336-a2-systems=PATH
    python benchmarks/fetch_snapshots.py --report      # replay every cached snapshot, print the table

Each snapshot lands in CACHE/<name>/<file>.pickle; files git stores as absent or empty are skipped.
This script does not use the network.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracer.devices.cuda.snapshot import load_snapshot
from tracer.devices.cuda.snapshot_replay import replay_snapshot

PATTERNS = {
    "EfficientPyTorch": ("chapter_07_memory/traces/", "chapter_10_mingpt/memory_profiles/"),
    "cs336-a2-systems": ("memory_files/",),
}


def cache_dir() -> Path:
    return Path(os.environ.get("MEMTRACE_SNAPSHOT_CACHE", Path.home() / ".cache" / "memtrace" / "snapshots"))


def _git(repo: Path, *args: str) -> bytes:
    git_dir = repo / ".git" if (repo / ".git").exists() else repo
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, check=True).stdout


def copy_snapshots(name: str, repo: Path, dest: Path) -> int:
    """Copy the snapshot pickles of one source repository at HEAD into dest/name; how many."""
    files = _git(repo, "ls-tree", "-r", "--name-only", "HEAD").decode().splitlines()
    wanted = [f for f in files if f.endswith(".pickle") and f.startswith(PATTERNS[name])]
    (dest / name).mkdir(parents=True, exist_ok=True)
    count = 0
    for path in wanted:
        try:
            data = _git(repo, "show", f"HEAD:{path}")
        except subprocess.CalledProcessError:
            continue  # the blob is not stored (large file left out of the clone)
        if data:
            (dest / name / Path(path).name).write_bytes(data)
            count += 1
    return count


def report(dest: Path) -> None:
    """One line per cached snapshot: segments, reserved bytes, peaks, byte-exact or not."""
    print(f"{'snapshot':52s} {'segments':>9s} {'reserved B':>14s} {'peak alloc B':>14s} match")
    for path in sorted(dest.rglob("*.pickle")):
        if path.stat().st_size == 0:
            continue
        r = replay_snapshot(load_snapshot(path))
        name = f"{path.parent.name}/{path.name}"
        seg = f"{r.segments_replayed}/{r.segments_expected}"
        print(f"{name:52s} {seg:>9s} {r.reserved_replayed:>14d} {r.allocated_peak_bytes:>14d} {r.match}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", action="append", default=[], help="NAME=PATH of a clone or git dir")
    parser.add_argument("--report", action="store_true", help="replay the cached snapshots")
    args = parser.parse_args()
    dest = cache_dir()
    for item in args.source:
        name, _, path = item.partition("=")
        if name not in PATTERNS:
            parser.error(f"unknown source {name}; known: {', '.join(PATTERNS)}")
        print(f"{name}: {copy_snapshots(name, Path(path), dest)} snapshots into {dest / name}")
    if args.report:
        report(dest)


if __name__ == "__main__":
    main()
