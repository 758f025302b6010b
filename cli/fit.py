"""`memtrace fit MODEL --input Bx3x224x224 --gpu NAME`: the largest batch that fits, by simulation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from memtrace.cli.common import (
    engine_options,
    gpu_option,
    headroom_option,
    make_request,
    plot_option,
    user_stdout_to_stderr,
    writable,
)
from memtrace.tracer.core.records import GpuSpec
from memtrace.tracer.core.specs import Headroom, human_bytes


@click.command("fit", short_help="The largest batch (or any --input symbol) that fits a GPU.")
@engine_options
@gpu_option(required=True)
@headroom_option
@click.option(
    "--target-batch",
    type=click.IntRange(min=1),
    default=None,
    help="Recommend micro-batch x accumulation steps reaching at least this effective batch.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@plot_option("Write the figure: the peak at each probed value, the budget, the value chosen.")
def fit(
    gpu: GpuSpec,
    headroom: Headroom,
    target_batch: int | None,
    as_json: bool,
    plot_file: Path | None,
    **options: Any,
) -> None:
    """Find the largest value of the --input symbol (e.g. B) whose predicted peak fits the GPU; with
    `--fsdp W` (or `--ddp W`), first the smallest world size (a power of two up to 1024) that fits."""
    from memtrace.tracer.studies.fit import fit as compute
    from memtrace.tracer.studies.fit import plan_accumulation, world_symbol

    writable(plot_file, "--plot", (".png", ".svg"))
    request = make_request(**options, gpu=gpu, headroom=headroom)
    if world_symbol(request) is not None:
        _fit_world(request, gpu, headroom, as_json, target_batch, plot_file)
        return
    with user_stdout_to_stderr(as_json):
        result = compute(request, gpu, headroom)
        plan = None
        if target_batch is not None:
            plan = plan_accumulation(request, gpu, headroom, target_batch, result)
    if plot_file is not None:
        from memtrace.tracer.outputs.plots import fit_figure, save

        save(fit_figure(result, gpu.name), plot_file)
    data = result.to_json()
    if plan is not None:
        data["target_batch"] = {"target": target_batch, **vars(plan)}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    _print(result, plan, gpu, target_batch)


def _fit_world(
    request: Any,
    gpu: GpuSpec,
    headroom: Headroom,
    as_json: bool,
    target_batch: int | None,
    plot_file: Path | None,
) -> None:
    from memtrace.tracer.core.errors import MemtraceError
    from memtrace.tracer.studies.fit import fit_world

    if target_batch is not None or plot_file is not None:
        raise MemtraceError("--target-batch and --plot are for a batch symbol alone, not with a world size W")
    with user_stdout_to_stderr(as_json):
        found = fit_world(request, gpu, headroom)
    if as_json:
        click.echo(json.dumps(found.to_json(), indent=2))
        return
    out = (Console() if Console().is_terminal else Console(width=160)).print
    sym, fig = found.symbol, _figure(found.basis)
    out(
        f"budget on {gpu.name}: {human_bytes(found.budget_bytes)} per rank "
        f"(GPU {human_bytes(gpu.bytes)} - headroom)"
    )
    if found.world == 0:
        out(f"[bold red]{sym}=1024 does not fit[/]: a rank's {fig} {human_bytes(found.peak_bytes)}")
    else:
        out(
            f"[bold green]{sym}={found.world}[/] is the smallest world size that surely fits: "
            f"a rank's {fig} {human_bytes(found.peak_bytes)}"
        )
    out(
        f"{len(found.probes)} simulations ({fig}): "
        + ", ".join(f"{sym}={v} {human_bytes(p)}" for v, p in found.probes)
    )
    if found.batch is not None:
        _print(found.batch, None, gpu, None)


def _print(result: Any, plan: Any, gpu: GpuSpec, target: int | None) -> None:
    out = (Console() if Console().is_terminal else Console(width=160)).print
    sym, fig = result.symbol, _figure(result.basis)
    out(f"budget on {gpu.name}: {human_bytes(result.budget_bytes)} (GPU {human_bytes(gpu.bytes)} - headroom)")
    if result.max_value == 0:
        verb = "does not surely fit" if result.borderline_value else "does not fit"
        out(f"[bold red]{sym}=1 {verb}[/]: {fig} {human_bytes(result.peak_bytes)}{_sure(result)}")
        _print_borderline(result, out)
        for s in result.suggestions:
            out(
                f"  {s.change} ({s.flags}): fits up to {sym}={s.max_value}, {fig} {human_bytes(s.peak_bytes)}"
            )
        if not result.suggestions:
            out("  no single change (bf16 autocast, checkpointing, SGD, half resolution) makes it fit")
    elif result.serving is not None and result.serving.position_bound:
        out(
            f"[bold green]{sym}={result.max_value}[/] fits: {_figures(result)}{_sure(result)}; the model's "
            f"max_position_embeddings ({result.serving.max_positions}) stops it there, not the GPU"
        )
    elif result.capped:
        out(f"[bold green]{sym}={result.max_value}[/] fits: the search's cap (the peak hardly grows)")
    else:
        out(f"[bold green]{sym}={result.max_value}[/] fits: {_figures(result)}{_sure(result)}")
        if result.borderline_value:
            _print_borderline(result, out)
        else:
            out(f"  {sym}={result.max_value + 1} does not: {fig} {human_bytes(result.next_peak_bytes)}")
    _print_context(result, out)
    out(
        f"{result.simulations} simulation{'s' if result.simulations != 1 else ''}: "
        + ", ".join(f"{sym}={v}" for v, _ in result.probes)
    )
    if plan is not None:
        out(
            f"target batch {target}: micro-batch {plan.micro_batch} x {plan.steps} accumulation steps "
            f"= {plan.effective_batch}, {fig} {human_bytes(plan.peak_bytes)}"
        )


def _figure(basis: str) -> str:
    """The figure held against the budget, named: `reserved` (on cuda) or `allocated`."""
    return basis


def _figures(result: Any) -> str:
    """`reserved 24.43 GB (allocated 22.56 GB)`: the figure held against the budget first."""
    text = f"{_figure(result.basis)} {human_bytes(result.peak_bytes)}"
    if result.basis == "reserved" and result.allocated_bytes:
        text += f" (allocated {human_bytes(result.allocated_bytes)})"
    return text


def _sure(result: Any) -> str:
    """What the fit allowed for: every stated uncertainty at its bound."""
    if not result.uncertain_reasons:
        return ""
    reasons = " and ".join(result.uncertain_reasons)
    return f", room left for {reasons} at its bound ({human_bytes(result.uncertain_bytes)})"


def _print_borderline(result: Any, out: Any) -> None:
    """The largest value that fits by the simulation alone, above the one that surely fits."""
    if not result.borderline_value:
        return
    sym, fig, value = result.symbol, _figure(result.basis), result.borderline_value
    reasons = " and ".join(result.uncertain_reasons) or "the uncertainty"
    peak = human_bytes(result.borderline_peak_bytes)
    out(
        f"[bold yellow]{sym}={value}[/] is borderline: {fig} {peak} fits by the simulation, "
        f"not if {reasons} takes its bound"
    )
    if result.borderline_next_peak_bytes:
        out(f"  {sym}={value + 1} does not fit: {fig} {human_bytes(result.borderline_next_peak_bytes)}")


def _print_context(result: Any, out: Any) -> None:
    """--mode generate: the total context at the answer, of the model's positions."""
    serving = result.serving
    if serving is None or not serving.context_tokens or not serving.max_positions:
        return
    of = f" of the model's {serving.max_positions} positions"
    out(f"  total context at {result.symbol}={result.max_value}: {serving.context_tokens} tokens{of}")
