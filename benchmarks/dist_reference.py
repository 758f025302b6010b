"""The data-parallel ground truth: each rank's CPU-allocator peak of a real DDP or FSDP2 step on gloo.

    torchrun --nproc-per-node 2 benchmarks/dist_reference.py --out /tmp/ref \
        benchmarks/models/dist_models.py:cnn --input 8x3x32x32 --fsdp ';' \
        benchmarks/models/dist_models.py:lm --input 4x64:int64

Each case is measured in turn; each rank writes OUT/case{I}-rank{R}.json: {"rank", "world", "peak",
"start", "rise", "unpaired"}. The step is memtrace's own (tracer/engine/program.py), the model wrapped by the
code the simulation runs (tracer/engine/distributed.py `wrap_model`, without the simulation's patches). As
tests/reference.py measures one process: one warm-up step, then the profiled step; peak = bytes live at its
start + the largest rise of the allocator's events. The bytes live at the start are the net of every
allocation event from the model's build through the warm-up step (profiled too), so buckets, shards and
anything else the engine keeps are counted.

One harness patch: gloo runs collectives on worker threads, and a collective's Work holds its tensors; when
the worker drops the Work last, the tensors are freed on that thread, which the profiler does not see (the
all-gather outputs of FSDP2, at random). `Work.wait` here sleeps 5 ms after the collective completes, so the
worker lets go first and the free happens where the engine drops the tensor, on the profiled thread. Memory
is unchanged; `unpaired` counts addresses allocated twice without a free between (0 when nothing was missed).
For the same reason DDP is built with `init_sync=False`: its construction broadcasts the parameters through
one flat copy that gloo's worker may free (every rank builds the same seeded model, so nothing changes); the
buffers' broadcast before each forward (batch norm's statistics) keeps that race, a few hundred bytes.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile

from memtrace.tracer.core.parallel import Parallel
from memtrace.tracer.core.specs import parse_input, parse_kv, parse_optimizer
from memtrace.tracer.engine.distributed import wrap_model
from memtrace.tracer.engine.loader import Built, load_object, split_result
from memtrace.tracer.engine.program import NullObserver, make_optimizer, run_program
from memtrace.tracer.engine.recipes import Recipe, apply_to_model, cast_inputs
from memtrace.tracer.real.measure import _walk, allocation_events, largest_rise, real_plan
from memtrace.tracer.simulate import Config, Request, step_batch, step_specs


def measure_rank(request: Request, mesh: object) -> dict[str, int]:
    """Build, wrap, warm up and measure one rank's step; the process group is initialised."""
    config = request.config
    assert config.parallel is not None
    gc.collect()  # the previous case's engine (DDP holds reference cycles) is gone before this one starts
    torch.manual_seed(0)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as before:
        fn = load_object(request.builder) if isinstance(request.builder, str) else request.builder
        model, examples = split_result(fn(**dict(request.builder_kwargs)), "builder")
        apply_to_model(model, config.recipe)
        runner = wrap_model(model, config.parallel, mesh, init_sync=False)
        optimizer = make_optimizer(config.optimizer, list(model.parameters()), "cpu")
        specs = step_specs(request, Built(model, examples, "real"))
        batch = cast_inputs(step_batch(request, specs, "cpu"), config.recipe.dtype)
        plan = real_plan(config, "cpu")
        run_program(runner, batch, optimizer, plan, NullObserver(), iterations=1)
    start = sum(size for _, size, _ in allocation_events(before))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as step:
        run_program(runner, batch, optimizer, plan, NullObserver(), iterations=1, first=1)
    rise = largest_rise(size for _, size, _ in allocation_events(step))
    return {"peak": start + rise, "start": start, "rise": rise, "unpaired": unpaired([before, step])}


def unpaired(profiles: list[Any]) -> int:
    """Addresses allocated again without a free seen in between: frees the profiler missed."""
    from torch._C._profiler import _EventType

    events = []
    for prof in profiles:
        for n in _walk(prof.profiler.kineto_results.experimental_event_tree()):
            if n.tag == _EventType.Allocation:
                events.append((n.start_time_ns, int(n.extra_fields.alloc_size), n.extra_fields.ptr))
    live: set[int] = set()
    missed = 0
    for _, size, ptr in sorted(events):
        if size > 0:
            missed += ptr in live
            live.add(ptr)
        else:
            live.discard(ptr)
    return missed


def _settled_waits() -> None:
    """`Work.wait` returns 5 ms after the collective completes (see the module's docstring)."""
    original = dist.Work.wait

    def wait(self: Any, *args: Any, **kwargs: Any) -> Any:
        done = original(self, *args, **kwargs)
        time.sleep(0.005)
        return done

    dist.Work.wait = wait  # type: ignore[method-assign]


def parser() -> argparse.ArgumentParser:
    found = argparse.ArgumentParser(description="One rank's CPU-allocator peak of a real DDP or FSDP2 step")
    found.add_argument("model")
    found.add_argument("--input", action="append", default=[])
    found.add_argument("--arg", action="append", default=[], help="KEY=VALUE for the builder, as memtrace's")
    found.add_argument("--fsdp", action="store_true", help="FSDP2 (default: DDP)")
    found.add_argument("--bucket-cap-mb", type=float)
    found.add_argument("--reshard-after-forward", default="yes")
    found.add_argument("--fsdp-wrap", action="append", default=[])
    found.add_argument("--fsdp-param-dtype")
    found.add_argument("--fsdp-reduce-dtype")
    found.add_argument("--checkpoint", action="append", default=[])
    found.add_argument("--optimizer", default="adam")
    return found


def request_of(opts: argparse.Namespace, rank: int, world: int) -> Request:
    parallel = Parallel(
        "fsdp" if opts.fsdp else "ddp",
        world,
        rank,
        bucket_cap_mb=opts.bucket_cap_mb,
        reshard_after_forward=opts.reshard_after_forward == "yes",
        wrap=tuple(opts.fsdp_wrap),
        param_dtype=opts.fsdp_param_dtype,
        reduce_dtype=opts.fsdp_reduce_dtype,
    )
    config = Config(
        optimizer=parse_optimizer(opts.optimizer),
        device="cpu",
        recipe=Recipe(checkpoint=tuple(opts.checkpoint)),
        parallel=parallel,
    )
    kwargs = tuple(parse_kv(a) for a in opts.arg)
    return Request(opts.model, tuple(parse_input(s) for s in opts.input), kwargs, config)


def main() -> None:
    """`--out DIR CASE [';' CASE ...]`: each case is measured in turn, written to DIR/case{i}-rank{R}.json."""
    args = sys.argv[1:]
    if len(args) < 3 or args[0] != "--out":
        raise SystemExit("usage: dist_reference.py --out DIR MODEL [options] [';' MODEL [options] ...]")
    out = Path(args[1])
    cases = [parser().parse_args(part) for part in _split(args[2:])]
    dist.init_process_group("gloo")
    _settled_waits()
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = None
    if any(c.fsdp for c in cases):
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (world,))
    out.mkdir(parents=True, exist_ok=True)
    for i, opts in enumerate(cases):
        figures = measure_rank(request_of(opts, rank, world), mesh)
        (out / f"case{i}-rank{rank}.json").write_text(json.dumps({"rank": rank, "world": world, **figures}))
        dist.barrier()
    dist.destroy_process_group()


def _split(args: list[str]) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for a in args:
        if a == ";":
            parts.append([])
        else:
            parts[-1].append(a)
    return [p for p in parts if p]


if __name__ == "__main__":
    main()
