"""Turn what benchmarks/gpu/run.sh left in OUT into the committed tables under
benchmarks/results/<gpu>-<torch>/, laid out as benchmarks/results/h200-torch2.11 is (the jsonl files as
measured, a README of tables).

python benchmarks/gpu/collect_results.py OUT [--dest benchmarks/results] [--summary FILE]

OUT is run.sh's folder: its results.tgz (unpacked here into OUT/parts) or its parts/ folder. The tables:
- verify: each suite case's measured allocated and reserved beside the error, and how many are within
  issue 24's bounds (1% allocated, 2% reserved);
- gen/ (issue 21): the same, plus the simulated `cuda.host_bytes` beside the pinned host allocator's peak;
- qlora/ (issue 22): the same, plus the simulated `cuda.managed_bytes` beside what bitsandbytes asked
  cudaMallocManaged for;
- compile/ (issue 23): eager and compiled measured side by side, the compiled prediction and
  `cuda.compiled_range`, and whether the measured compiled peak lies inside the range;
- cuDNN (issue 24): the convolution and RNN tables' counts, and how many RNN shapes the rule's range held.
With --summary only the markdown is written (run.sh calls it so on the GPU machine); else the files are
copied to DEST/<gpu>-torch<major.minor>/ and README.md there is written from the tables.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

ALLOCATED, RESERVED = 0.01, 0.02  # issue 24's bounds
KEEP = (
    "verify.jsonl", "verify.md", "groups.jsonl", "groups.md", "facts.json", "monitor.json",
    "cudnn-conv.json", "cudnn-rnn.json",
)  # fmt: skip


def parts_of(out: Path) -> Path:
    """OUT/parts, unpacked from OUT/results.tgz when only the archive is there."""
    parts = out / "parts"
    archive = out / "results.tgz"
    if not parts.is_dir() and archive.exists():
        with tarfile.open(archive) as tar:
            tar.extractall(out, filter="data")
    if not parts.is_dir():
        raise SystemExit(f"collect_results: no {parts} and no {archive}: is {out} run.sh's OUT?")
    return parts


def rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _check(row: dict[str, Any], figure: str) -> dict[str, Any] | None:
    return next((c for c in row.get("checks", []) if c["figure"] == figure), None)


def _pct(err: float | None) -> str:
    return "n/a" if err is None else f"{100 * err:+.3f}%"


def _fig(row: dict[str, Any], figure: str) -> tuple[str, str]:
    c = _check(row, figure)
    return ("", "") if c is None else (f"{c['measured']:,}", _pct(c["error"]))


def verify_table(found: list[dict[str, Any]], title: str) -> list[str]:
    """One row per case: measured allocated and reserved with their errors (a CPU dry run: the peak)."""
    lines = [f"### {title}", "", "| case | measured allocated | error | measured reserved | error |"]
    lines.append("|---|---:|---:|---:|---:|")
    within = total = 0
    for r in found:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['case']} | {'failed' if 'error' in r else 'skipped'}: "
                         f"{r.get('error') or r['skipped']} | | | |")  # fmt: skip
            continue
        alloc, res = _check(r, "allocated") or _check(r, "peak"), _check(r, "reserved")
        total += 1
        ok_a = alloc is not None and alloc["error"] is not None and abs(alloc["error"]) <= ALLOCATED
        ok_r = res is None or (res["error"] is not None and abs(res["error"]) <= RESERVED)
        within += ok_a and ok_r
        a, ae = _fig(r, "allocated" if _check(r, "allocated") else "peak")
        b, be = _fig(r, "reserved")
        lines.append(f"| {r['case']} | {a} | {ae} | {b} | {be} |")
    lines += ["", f"{within} of {total} cases ran within 1% allocated and 2% reserved.", ""]
    return lines


def _host_peak(measured: dict[str, Any]) -> int | None:
    host = measured.get("host") or {}
    keys = [k for k in host if "allocated" in k and "peak" in k]
    return int(host[keys[0]]) if keys else None


def side_table(found: list[dict[str, Any]], title: str, figure: str) -> list[str]:
    """`figure` (host_bytes or managed_bytes): simulated beside measured, for the rows that carry it."""
    lines = [f"### {title}", "", f"| case | simulated {figure} | measured | error |", "|---|---:|---:|---:|"]
    for r in found:
        side = r.get("side")
        if not side:
            continue
        sim = side["simulated"].get(figure)
        got = side["measured"].get(figure) if figure == "managed_bytes" else _host_peak(side["measured"])
        err = _pct((sim - got) / got) if sim is not None and got else "n/a"
        lines.append(f"| {r['case']} | {'' if sim is None else f'{sim:,}'} | "
                     f"{'' if got is None else f'{got:,}'} | {err} |")  # fmt: skip
    return [*lines, ""]


def _peak(row: dict[str, Any]) -> dict[str, Any] | None:
    return _check(row, "allocated") or _check(row, "peak")


def compile_table(found: list[dict[str, Any]]) -> list[str]:
    """Eager against compiled, measured, beside the simulated compiled figure and `cuda.compiled_range`."""
    lines = ["### compile/: eager and compiled steps side by side (issue 23)", ""]
    lines += ["| case | eager alloc | compiled alloc | compiled predicted | range low..high | inside | "
              "eager reserved | compiled reserved |", "|---|---:|---:|---:|---:|---|---:|---:|"]  # fmt: skip
    by = {r["case"]: r for r in found}
    for name in sorted({c.rsplit("/", 1)[0] for c in by if c.startswith("compile/")}):
        eager, comp = by.get(f"{name}/eager", {}), by.get(f"{name}/compiled", {})
        ea, ca = (
            _check(eager, "allocated") or _check(eager, "peak"),
            _check(comp, "allocated") or _check(comp, "peak"),
        )
        er, cr = _check(eager, "reserved"), _check(comp, "reserved")
        rng = (comp.get("side") or {}).get("simulated", {}).get("compiled_range") or {}
        low, high = rng.get("low"), rng.get("high")
        inside = "n/a" if ca is None or low is None else str(low <= ca["measured"] <= high)
        cell = lambda c, k: "" if c is None else f"{c[k]:,}"  # noqa: E731
        span = "" if low is None else f"{low:,}..{high:,}"
        cells = [cell(ea, "measured"), cell(ca, "measured"), cell(ca, "predicted"), span, inside]
        cells += [cell(er, "measured"), cell(cr, "measured")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        for r in (eager, comp):
            if "error" in r or "skipped" in r:
                lines.append(f"| {r['case']} | {r.get('error') or r['skipped']} | | | | | | |")
    return [*lines, ""]


def cudnn_lines(parts: Path) -> list[str]:
    lines = ["### cuDNN tables (issue 24)", ""]
    for name in ("cudnn-conv.json", "cudnn-rnn.json"):
        path = parts / name
        if not path.exists():
            lines.append(f"- {name}: not written (see parts/cudnn.log)")
            continue
        for t in json.loads(path.read_text())["tables"]:
            entries = t["entries"]
            text = (
                f"- {name}: {len(entries)} entries on {t['gpu']} (cuDNN {t['cudnn_version']}): {t['stopped']}"
            )
            if name == "cudnn-rnn.json":
                held = Counter(
                    _variant(e) for e in entries if e["reserve_in_range"] and e["workspace_in_range"]
                )
                every = Counter(_variant(e) for e in entries)
                text += "; held by the rule's range: " + ", ".join(
                    f"{k} {held[k]}/{n}" for k, n in every.items()
                )
            lines.append(text)
    return [*lines, ""]


def _variant(e: dict[str, Any]) -> str:
    return e["kind"] + (" proj" if e.get("proj") else "") + (" packed" if e.get("tokens") else "")


def summary(parts: Path) -> tuple[str, dict[str, Any]]:
    suite, groups = rows(parts / "verify.jsonl"), rows(parts / "groups.jsonl")
    env = next((r["env"] for r in suite + groups if "env" in r), {})
    head = ", ".join(f"{k} {v}" for k, v in env.items())
    gen = [r for r in groups if r["case"].startswith("gen/")]
    qlora = [r for r in groups if r["case"].startswith("qlora/")]
    lines = [f"## {head or 'environment unknown'}", ""]
    lines += verify_table(suite, "verify over the suite (issue 24: within 1% allocated, 2% reserved)")
    lines += verify_table(gen, "gen/: generation (issue 21)")
    lines += side_table(gen, "gen/: the offloaded caches' pinned host bytes", "host_bytes")
    lines += verify_table(qlora, "qlora/: bitsandbytes and PEFT (issue 22)")
    lines += side_table(qlora, "qlora/: paged optimizer state in unified memory", "managed_bytes")
    lines += compile_table(groups)
    lines += cudnn_lines(parts)
    return "\n".join(lines) + "\n", env


def dest_name(env: dict[str, Any]) -> str:
    """'NVIDIA H100 80GB HBM3', '2.11.0+cu130' -> 'h100-torch2.11'."""
    gpu = re.search(r"([A-Z]+\d+)", str(env.get("gpu", "")).replace("NVIDIA", ""))
    torch = re.match(r"(\d+\.\d+)", str(env.get("torch", "")))
    return f"{gpu.group(1).lower() if gpu else 'gpu'}-torch{torch.group(1) if torch else 'unknown'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--dest", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    ap.add_argument("--summary", type=Path, help="write the markdown here and copy nothing")
    a = ap.parse_args()
    parts = parts_of(a.out)
    text, env = summary(parts)
    if a.summary is not None:
        a.summary.write_text(text)
        print(text)
        return
    dest = a.dest / dest_name(env)
    dest.mkdir(parents=True, exist_ok=True)
    for name in KEEP:
        if (parts / name).exists():
            shutil.copy(parts / name, dest / name)
    if (a.out / "log.txt").exists():
        shutil.copy(a.out / "log.txt", dest / "run-log.txt")
    readme = [f"# memtrace on {env.get('gpu', 'a GPU')}: benchmarks/gpu/run.sh (issues 21-24)", ""]
    readme += [
        "Made by `benchmarks/gpu/collect_results.py` from the run's OUT; errors are",
        "(predicted - measured) / measured. The command is in benchmarks/gpu/README.md.",
        "",
        text,
    ]
    (dest / "README.md").write_text("\n".join(readme))
    print(f"wrote {dest}", file=sys.stderr)


if __name__ == "__main__":
    main()
