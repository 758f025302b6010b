"""The trace run: the step (memtrace's own, or the user's) on the meta model under the recorder, every
event recorded."""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..core.assume import Policy
from ..core.errors import MemtraceError, first_line
from ..core.heap import collector_paused
from ..core.records import (
    Phase,
    Trace,
)
from ..devices.gpu import gpu_notes, gpu_target, stated_ranges
from ..engine.batch import Batch, as_batch
from ..engine.data_dependent import resolving
from ..engine.device_model import DeviceModel
from ..engine.distributed import simulated_world
from ..engine.hooks import recording, register_baseline
from ..engine.loader import load_object
from ..engine.losses import make_loss
from ..engine.prepare import PACKED_NOTE, full_length_packs, inventory, lazy_names, materialize, script_notes
from ..engine.program import StepPlan, make_optimizer, run_program
from ..engine.recipes import apply_to_model, cast_inputs, meta_autocast
from ..engine.recorder import Recorder
from ..meta.compat_bnb import quantize_on_meta
from ..meta.optim_meta import fused_on_meta
from ..meta.routing import routed_if
from .config import Config, StepFn
from .generation import check_generate, generation_notes, watching_generation


class ProbeNeeded(Exception):
    """The step, run without the probing forward, created a parameter, buffer or submodule: the probe would
    have made it before the optimizer. Build the model again and trace with `probe=True`."""


def trace_model(
    model: nn.Module, inputs: Batch | Sequence[torch.Tensor], config: Config, probe: bool = True
) -> Trace:
    """Run the program on the model's (meta) tensors and return every event.

    The recipe is applied to the model here (cast, checkpoint wrapping): pass a freshly built model. With
    `probe=False` and no lazy module, the probing forward (`prepare.materialize`) is left out; if the step
    then changes the model's inventory, `ProbeNeeded` is raised (the model is spent: build another).
    """
    batch = as_batch(inputs)
    probe = probe or bool(lazy_names(model))
    before: set[str] | None = None  # without the probe, the inventory the step starts from
    packs = full_length_packs()
    if config.generate is not None and config.step is None:
        prompt = batch.kwargs.get("input_ids", batch.args[0] if batch.args else None)
        check_generate(model, prompt, config.generate)
    device = DeviceModel(config.device)
    rec = Recorder(device)
    try:
        with (
            routed_if(config.step is not None, config.device, "meta"),
            simulated_world(config.parallel) as world,
        ):
            plan = plan_for(config)
            notes = quantize_on_meta(model)  # bitsandbytes quantizes as the model moves to its device
            # lazy and in-forward parameters
            notes += materialize(model, batch.args, batch.kwargs) if probe else script_notes(model)
            apply_to_model(model, config.recipe)
            batch = cast_inputs(batch, config.recipe.dtype)
            runner = model
            if world is not None:  # DDP or FSDP2 on fake tensors: the model is what the step calls
                runner, batch = world.wrap(model, batch, rec)
            optimizer = None
            if config.mode == "train":
                with fused_on_meta():  # the patch for the step registers the meta kernels
                    optimizer = make_optimizer(config.optimizer, list(model.parameters()), config.device)
            register_baseline(rec, model, batch.tensors(), _parameter_owners(model))
            before = None if probe else inventory(model)
            with (
                _heap_frozen(),
                gpu_target(config) as gpu,
                device.patched(),
                resolving(
                    Policy(config.assume),
                    lambda: rec.current_module() or type(model).__name__,
                    lambda: rec.iteration,
                    rec.inside_module,
                ) as assumed,
                recording(rec, model),
                watching_generation(rec, model) as watch,
            ):
                run_program(runner, batch, optimizer, plan, rec, config.iterations)
    except MemtraceError as exc:
        _check_unprobed(model, before, exc)
        raise
    except Exception as exc:
        _check_unprobed(model, before, exc)
        raise MemtraceError(_failure(rec, model, exc)) from exc
    _check_unprobed(model, before)
    if before is not None and full_length_packs() > packs:
        notes.append(PACKED_NOTE)  # where the probe would have put it: after the scripted modules' note
    every_note = (*notes, *(world.notes if world is not None else ()), *gpu_notes(config, gpu))
    every_note += generation_notes(config, watch)
    with collector_paused():  # ~110k records made, none freed: a full pass would walk the whole process
        trace = rec.trace(config.iterations)
    return replace(
        trace,
        notes=every_note,
        assumptions=tuple(assumed),
        decode_starts=tuple(watch.starts),
        stated_ranges=stated_ranges(gpu),
    )


def _check_unprobed(model: nn.Module, before: set[str] | None, failure: Exception | None = None) -> None:
    """Raise `ProbeNeeded` when a step run without the probe changed the model's inventory (its failure
    included: a parameter the optimizer did not see can make it fail)."""
    if before is not None and inventory(model) != before:
        raise ProbeNeeded from failure


@contextmanager
def _heap_frozen() -> Iterator[None]:
    """The objects made before the step (the imports, the model) sit out the garbage collector's passes
    while its hooks are installed and it runs: a full pass walked all of them, a 70B step's trace growing
    past a quarter of them twice. The step's own objects are collected as before; the old ones take part
    again when it is over."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def plan_for(config: Config) -> StepPlan:
    """The step on meta: the recipe's accumulation and the emulated autocast of the target device, the loss,
    or the user's own step function (loaded here, so a GradScaler it makes at import is routed too)."""
    if config.step is not None:
        return StepPlan(config.mode, user_step=step_function(config.step))
    autocast = meta_autocast(config.device, config.recipe.amp)
    scaler = None
    if config.recipe.amp == "fp16" and config.mode == "train":
        from ..meta.autocast import MetaGradScaler

        scaler = MetaGradScaler(config.device)  # fp16 training scales the loss
    loss_fn = make_loss(config.loss)
    return StepPlan(
        config.mode,
        config.recipe.accumulate,
        autocast,
        scaler,
        loss_fn,
        config.free_output,
        generate=generate_kwargs(config),
    )


def generate_kwargs(config: Config) -> tuple[tuple[str, Any], ...]:
    """`generate()`'s keyword arguments under --mode generate, else none."""
    return tuple(config.generate.kwargs().items()) if config.generate is not None else ()


def step_function(step: str | StepFn) -> StepFn:
    """The user's step: a callable, or `FILE.py:FUNC` imported anew (its import-time state is its own)."""
    fn = load_object(step, "--step", fresh=True) if isinstance(step, str) else step
    if not callable(fn):
        raise MemtraceError(f"--step {step!r} is not callable")
    return fn  # type: ignore[no-any-return]


def _failure(rec: Recorder, model: nn.Module, exc: Exception) -> str:
    where = rec.failed_in or rec.module_stack[-1] or type(model).__name__
    text = str(exc)
    if rec.phase is Phase.SETUP:
        return f"setting up the step failed: {first_line(exc)}"
    if "Meta kernel" in text or "'Meta' backend" in text:
        found = re.match(r"(\S+::[\w.]+)", text)
        op = found.group(1) if found else "an operator"
        return (
            f"the {rec.phase.value} pass failed in module {where!r}: {op} has no meta kernel; register one "
            "with torch.library.register_fake to simulate this model"
        )
    data_op = re.search(r"register_meta function for (torch\.\w+)\(\)", text)
    if data_op or "data-dependent" in text.lower():
        from ..core.assume import KEYS

        op = data_op.group(1) if data_op else "an op"
        return (
            f"the {rec.phase.value} pass failed in module {where!r}: {op} has a data-dependent output that "
            f"meta cannot know; choose it with --assume KEY=VALUE (keys: {', '.join(KEYS)})"
        )
    hint = ""
    if "meta tensors" in text:
        hint = " (data-dependent code such as .item(), nonzero or an if on tensor values cannot run on meta)"
    return f"the {rec.phase.value} pass failed in module {where!r}: {first_line(exc)}{hint}"


def _parameter_owners(model: nn.Module) -> dict[int, str]:
    owners: dict[int, str] = {}
    for mname, module in model.named_modules():
        for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            owners.setdefault(id(t), mname)
    return owners
