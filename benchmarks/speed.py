"""Speed at scale: per case, memtrace's simulation time (interpreter start-up and imports shown apart), the
real CPU step's time, and PyTorch's `MemTracker` under `FakeTensorMode` on the same step.

Each tool runs in a fresh child process of its own (this file, called with `--child`), so that every figure
includes no warm cache of another and `--memtracker-timeout` can stop a MemTracker run honestly. The real
step is skipped, with the reason, when the simulated step needs more memory than this machine has.

    .venv/bin/python benchmarks/speed.py                          # the default cases, a table
    .venv/bin/python benchmarks/speed.py llama70b --memtracker-timeout 900 --json /tmp/speed.json
    .venv/bin/python benchmarks/speed.py --hot-path cpu cuda      # the 70B command: imports, then the rest

Cases: a few of benchmarks/suite.py's (on the CPU target, whose real step can run here) and the
Llama-70B-shaped step of issue 10 (bf16 parameters, AdamW, batch 1, 4096 tokens, cuda target, h100-80gb).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


@dataclass(frozen=True)
class SpeedCase:
    """A suite case (by name) or the 70B step, with the simulated target and GPU."""

    name: str
    device: str = "cpu"
    gpu: str | None = None
    args: dict[str, Any] = field(default_factory=dict)


LLAMA70B = "llama70b"
DEFAULT_CASES = ("seed_cnn_256", "lstm_tagger", "unet_small", "gpt2", "bert", "llama", LLAMA70B)


def suite_case(name: str) -> Any:
    """The `Case` of benchmarks/suite.py by name, or the 70B step."""
    from memtrace.tracer.real.bench import Case

    if name == LLAMA70B:
        return Case(
            LLAMA70B,
            str(HERE / "models" / "llama70b.py:build"),
            ("input_ids=1x4096:int64", "labels=1x4096:int64"),
            optimizer="adamw",
            dtype="bf16",
            needs=("transformers", "transformers.models.llama.modeling_llama"),
        )
    from suite import SUITE

    found = [c for c in SUITE if c.name == name]
    if not found:
        raise SystemExit(f"speed.py: unknown case {name!r} ({', '.join(c.name for c in SUITE)}, {LLAMA70B})")
    return found[0]


def request(name: str, device: str, layers: int | None = None) -> Any:
    from memtrace.tracer.core.specs import parse_gpu
    from memtrace.tracer.real.bench_run import request_for
    from memtrace.tracer.simulate import with_gpu_arch

    req = request_for(suite_case(name), device)
    if name == LLAMA70B:
        req = replace(req, gpu=parse_gpu("h100-80gb"))
        if layers is not None:
            req = replace(req, builder_kwargs=(("layers", layers),))
    return with_gpu_arch(req)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


# --- the children ------------------------------------------------------------------------------------
def child_simulate(name: str, device: str) -> dict[str, Any]:
    """memtrace as a user runs it: imports, then build on meta + trace + analyse."""
    t0 = time.perf_counter()
    import importlib

    from memtrace.tracer import simulate

    req = request(name, device)
    for module in suite_case(name).needs:  # the builder's own imports (transformers) count as imports
        importlib.import_module(module)
    simulate.build(req.builder, dict(req.builder_kwargs))  # a first build imports what the builder imports
    imported, cpu = time.perf_counter(), time.process_time()
    built = simulate.build(req.builder, dict(req.builder_kwargs))
    t_build = time.perf_counter()
    specs = simulate.step_specs(req, built)
    trace = simulate.trace_model(built.model, simulate.step_batch(req, specs), req.config)
    t_trace = time.perf_counter()
    res = simulate.analyse(trace, built.model, built.path, specs, req.config, req.gpu, req.headroom)
    done = time.perf_counter()
    return {
        "import_s": (imported - t0) - (t_build - imported),  # less the first build's own build time
        "build_s": t_build - imported,
        "trace_s": t_trace - t_build,
        "analyse_s": done - t_trace,
        "simulate_s": done - imported,
        "cpu_s": time.process_time() - cpu,  # the simulation's CPU seconds: its wall time on an idle machine
        "events": len(trace.events),
        "peak_bytes": res.peak_bytes,
        "reserved_bytes": res.cuda.reserved_peak_bytes if res.cuda is not None else None,
        "rss_mb": rss_mb(),
    }


def child_real(name: str) -> dict[str, Any]:
    """The real step on this CPU: one warm-up step, then the timed one (the same program memtrace runs)."""
    import torch

    from memtrace.tracer.engine.program import NullObserver, run_program
    from memtrace.tracer.engine.recipes import cast_inputs
    from memtrace.tracer.real.measure import _prepared, real_plan
    from memtrace.tracer.simulate import build, step_batch, step_specs

    torch.manual_seed(0)
    req = request(name, "cpu")
    built = build(req.builder, dict(req.builder_kwargs))
    from memtrace.tracer.engine.loader import load_object

    model = load_object(req.builder)(**dict(req.builder_kwargs))  # real weights on the CPU
    batch = cast_inputs(step_batch(req, step_specs(req, built), "cpu"), req.config.recipe.dtype)
    opt = _prepared(model, batch, req.config, "cpu")
    plan = real_plan(req.config, "cpu")
    run_program(model, batch, opt, plan, NullObserver(), iterations=1)
    t0 = time.perf_counter()
    run_program(model, batch, opt, plan, NullObserver(), iterations=1, first=1)
    return {"real_step_s": time.perf_counter() - t0, "rss_mb": rss_mb()}


def child_memtracker(name: str) -> dict[str, Any]:
    """PyTorch's MemTracker on the same step, every tensor fake (FakeTensorMode, CPU device)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from memtrace.tracer.engine.loader import load_object, make_inputs
    from memtrace.tracer.engine.program import NullObserver, run_program
    from memtrace.tracer.engine.recipes import cast_inputs
    from memtrace.tracer.real.measure import _prepared, real_plan

    req = request(name, "cpu")
    config = replace(req.config, recipe=replace(req.config.recipe, dtype=None))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(req.config.recipe.dtype or "", torch.float32)
    t0 = time.perf_counter()
    with FakeTensorMode():  # bf16 parameters built as such: Module.to() cannot swap fake parameters
        torch.set_default_dtype(dtype)
        model = load_object(req.builder)(**dict(req.builder_kwargs))
        torch.set_default_dtype(torch.float32)
        batch = cast_inputs(make_inputs(req.inputs, "cpu", req.config.targets), req.config.recipe.dtype)
        opt = _prepared(model, batch, config, "cpu")
        plan = real_plan(config, "cpu")
        tracker = MemTracker()
        tracker.track_external(model, *([opt] if opt is not None else []))
        with tracker:  # two steps, the module statistics reset between them, as its docstring does
            run_program(model, batch, opt, plan, NullObserver(), iterations=1)
            tracker.reset_mod_stats()
            run_program(model, batch, opt, plan, NullObserver(), iterations=1, first=1)
        peak = tracker.get_tracker_snapshot("peak")
    total = sum(int(v.get("Total", 0)) for v in peak.values())
    return {"memtracker_s": time.perf_counter() - t0, "memtracker_peak_bytes": total, "rss_mb": rss_mb()}


CHILDREN = {"simulate": child_simulate, "real": child_real, "memtracker": child_memtracker}


# --- the parent --------------------------------------------------------------------------------------
def spawn(kind: str, case: SpeedCase, timeout: float | None) -> dict[str, Any]:
    """One child; its JSON line, or what went wrong (a crash's last line, a timeout)."""
    cmd = [sys.executable, __file__, "--child", kind, case.name, "--device", case.device]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"status": f"crashed: {last[:200]}", "wall_s": wall}
    return {"status": "ok", "wall_s": wall, **json.loads(lines[-1])}


# --- a CLI command, as a user runs it ------------------------------------------------------------------
HOT_PATH = (  # the Llama-70B-shaped step of benchmarks/README.md's "Hot path", per target
    "benchmarks/models/llama70b.py:build --input 1x4096:int64 --dtype bf16 --optimizer adamw:foreach=false",
)
IMPORTS = "import memtrace.cli.main, memtrace.tracer.simulate, transformers.models.llama.modeling_llama"
CLI_CHILD = f"""
import os, sys, time
{IMPORTS}
with open(os.environ["MEMTRACE_SPEED_MARK"], "w") as fh:
    fh.write(f"{{time.time()!r}} {{time.process_time()!r}}")
sys.argv = ["memtrace", *sys.argv[1:]]
memtrace.cli.main.main()
"""


def measure_cli(args: str, repeats: int) -> dict[str, Any]:
    """`memtrace ARGS --json` as the `memtrace` command runs it, in a fresh process that first does the
    imports above and marks the time they end: imports = process start to the mark, simulation = the mark
    to the process's exit, both in the same run (the best of `repeats` runs by simulation); and the
    simulation's CPU seconds (user + system after the mark), which other jobs on the machine disturb less."""
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            mark = Path(tmp) / "imports_done"
            start = time.time()
            proc = subprocess.Popen(
                [sys.executable, "-c", CLI_CHILD, *args.split(), "--json"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "MEMTRACE_SPEED_MARK": str(mark)},
            )
            _, status, usage = os.wait4(proc.pid, 0)
            end = time.time()
            if status != 0:
                raise SystemExit(f"speed.py: memtrace {args} failed ({status})")
            imported, cpu_imports = (float(x) for x in mark.read_text().split())
        cpu = usage.ru_utime + usage.ru_stime - cpu_imports
        runs.append((end - imported, end - start, imported - start, cpu, usage.ru_maxrss / 1024))
    simulate, total, imports, cpu, rss = min(runs)
    return {
        "total_s": total,
        "import_s": imports,
        "simulate_s": simulate,
        "simulate_cpu_s": cpu,
        "rss_mb": rss,
    }


def compiled_sources() -> None:
    """Byte-compile memtrace's sources, as installing a package does: where `PYTHONDONTWRITEBYTECODE` is set
    (or the tree is fresh), an editable install would otherwise compile every module it imports, each run."""
    import compileall

    import memtrace
    import memtrace.cli
    import memtrace.tracer

    roots = {Path(m.__file__ or "").parent for m in (memtrace, memtrace.cli, memtrace.tracer)}
    for root in sorted(roots):
        compileall.compile_dir(str(root), quiet=1)


def main_cli(targets: list[str], repeats: int) -> None:
    compiled_sources()
    print("| target | total s | imports s | simulation s | simulation CPU s | RSS MB |")
    print("|---|---|---|---|---|---|")
    for target in targets:
        extra = "--device cpu" if target == "cpu" else "--device cuda --gpu h100-80gb"
        m = measure_cli(f"{HOT_PATH[0]} {extra}", repeats)
        print(
            f"| {target} | {m['total_s']:.2f} | {m['import_s']:.2f} | {m['simulate_s']:.2f} "
            f"| {m['simulate_cpu_s']:.2f} | {m['rss_mb']:.0f} |",
            flush=True,
        )


def available_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def measure_case(case: SpeedCase, real: bool, mt_timeout: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"case": case.name, "device": case.device}
    row["simulate"] = spawn("simulate", case, None)
    needed = row["simulate"].get("peak_bytes") or 0
    if not real:
        row["real"] = {"status": "skipped: --no-real"}
    elif needed > available_bytes() // 2:
        gb = needed / 1e9
        row["real"] = {
            "status": f"skipped: the step needs {gb:,.1f} GB; this machine has "
            f"{available_bytes() / 1e9:.1f} GB available"
        }
    else:
        row["real"] = spawn("real", case, None)
    row["memtracker"] = spawn("memtracker", case, mt_timeout)
    return row


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        "| case | target | start-up s | import s | simulate s (build/trace/analyse) | its CPU s | RSS MB "
        "| real CPU step s | MemTracker s | MemTracker peak | memtrace peak |"
    )
    out = [head, "|" + "---|" * 11]
    for r in rows:
        s, real, mt = r["simulate"], r["real"], r["memtracker"]
        sim = (
            f"{s['simulate_s']:.2f} ({s['build_s']:.2f}/{s['trace_s']:.2f}/{s['analyse_s']:.2f})"
            if s["status"] == "ok"
            else s["status"]
        )
        imports = s.get("import_s", 0)
        start = s.get("wall_s", 0) - imports - s.get("simulate_s", 0)  # interpreter start and exit
        out.append(
            f"| {r['case']} | {r['device']} | {start:.2f} | {imports:.2f} | {sim} | {s.get('cpu_s', 0):.2f} "
            f"| {s.get('rss_mb', 0):.0f} | {_secs(real, 'real_step_s')} | {_secs(mt, 'memtracker_s')} "
            f"| {_bytes(mt.get('memtracker_peak_bytes'))} | {_bytes(s.get('peak_bytes'))} |"
        )
    return "\n".join(out)


def _secs(part: dict[str, Any], key: str) -> str:
    return f"{part[key]:.2f}" if part["status"] == "ok" else part["status"]


def _bytes(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="*", default=list(DEFAULT_CASES))
    ap.add_argument("--memtracker-timeout", type=float, default=600.0, help="seconds per MemTracker run")
    ap.add_argument("--no-real", action="store_true", help="skip the real CPU steps")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument(
        "--hot-path",
        nargs="*",
        choices=("cpu", "cuda"),
        help="time the 70B CLI command per target: its imports, then the rest to its exit, in one process",
    )
    ap.add_argument("--repeats", type=int, default=3, help="with --hot-path: runs per figure (the best kept)")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--device", default=None, help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.hot_path is not None:
        main_cli(ns.hot_path or ["cpu", "cuda"], ns.repeats)
        return
    if ns.child:
        fn = CHILDREN[ns.child]
        out = fn(ns.cases[0], ns.device) if ns.child == "simulate" else fn(ns.cases[0])
        print(json.dumps(out))
        return
    rows = []
    for name in ns.cases:
        case = SpeedCase(name, "cuda") if name == LLAMA70B else SpeedCase(name)
        rows.append(measure_case(case, not ns.no_real, ns.memtracker_timeout))
        print(render(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    if ns.json:
        ns.json.write_text(json.dumps(rows, indent=1))
    print(f"# {os.cpu_count()} CPUs; each tool in a fresh process")
    print(render(rows))


if __name__ == "__main__":
    main()
