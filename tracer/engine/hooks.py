"""The hooks a simulation runs under: module forward hooks, saved-tensor hooks, the autograd engine's entry
points and the optimizers' step hooks, all of them telling the Recorder what happens (the module running,
the phase, what autograd saves, which storages are gradients or optimizer state), and the dispatch mode.
`recording(rec, model)` installs them all and removes them on exit.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from ..core.records import LOSS, Category, Phase
from ..meta.compat_bnb import held_tensors
from ..meta.compiled import not_compiled
from ..meta.compiled_layers import own_buffers_with
from .dispatch import RecordingMode
from .recorder import Recorder, active_recorder
from .tensor_facts import claim, plain_tensors


def register_baseline(
    rec: Recorder, model: nn.Module, inputs: Sequence[torch.Tensor], owners: dict[int, str]
) -> None:
    """Parameters, buffers and inputs exist before the step; parameters remember their module."""
    rec.bind_model(owners, list(model.parameters()))
    for p in model.parameters():
        for t in plain_tensors(p):  # a quantized weight's own tensors (torchao), else the parameter
            rec.mark_tensor(t, Category.PARAMETER, owners.get(id(p), ""))
    for b in model.buffers():
        rec.mark_tensor(b, Category.BUFFER, owners.get(id(b), ""))
    for t, owner in held_tensors(model):  # a quantized weight's absmax and code tables
        rec.mark_tensor(t, Category.PARAMETER, owner)
    for x in inputs:
        rec.mark_tensor(x, Category.INPUT)


@contextmanager
def recording(rec: Recorder, model: nn.Module) -> Iterator[Recorder]:
    """Module hooks, saved-tensor hooks and the dispatch mode, all removed on exit."""
    with ExitStack() as stack:
        stack.enter_context(rec.active())
        rec.name_modules(model)
        for name, module in model.named_modules():
            if isinstance(module, torch.jit.ScriptModule):
                continue  # takes no Python hooks: its ops count for the module around it
            stack.callback(module.register_forward_pre_hook(_pre_hook(rec, name)).remove)
            # always_call: a checkpoint's recomputation that stops early raises through the module
            stack.callback(module.register_forward_hook(_post_hook(rec, name), always_call=True).remove)
        stack.callback(register_optimizer_step_pre_hook(_optimizer_pre(rec)).remove)
        stack.callback(register_optimizer_step_post_hook(_optimizer_post(rec)).remove)
        for fn in ("backward", "grad"):
            stack.enter_context(_engine_watched(rec, fn))
        loss_modules = {name for name, m in model.named_modules() if isinstance(m, nn.modules.loss._Loss)}
        for fn in LOSS_FUNCTIONS:
            stack.enter_context(_loss_named(rec, fn, loss_modules))
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(_pack(rec), _unpack))
        stack.enter_context(_resizes_seen(rec))
        stack.enter_context(RecordingMode(rec))
        yield rec


def in_engine() -> bool:
    """Whether the autograd engine is running a node now (backward, or a recomputation inside it)."""
    return torch._C._current_autograd_node() is not None


@contextmanager
def _engine_watched(rec: Recorder, fn: str) -> Iterator[None]:
    """`torch.autograd.backward` (what `loss.backward()` calls) and `torch.autograd.grad` start the backward
    phase; when the outermost call returns, the parameters' `.grad` are gradients."""
    original = getattr(torch.autograd, fn)

    @functools.wraps(original)
    def run(*args: Any, **kwargs: Any) -> Any:
        if in_engine():  # a reentrant checkpoint's backward inside the engine
            return original(*args, **kwargs)
        rec.enter(Phase.BACKWARD)
        try:
            return original(*args, **kwargs)
        finally:
            rec.gradients()

    setattr(torch.autograd, fn, run)
    try:
        yield
    finally:
        setattr(torch.autograd, fn, original)


LOSS_FUNCTIONS = (
    "cross_entropy",
    "nll_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "mse_loss",
    "l1_loss",
    "smooth_l1_loss",
    "huber_loss",
    "kl_div",
    "ctc_loss",
    "poisson_nll_loss",
    "gaussian_nll_loss",
)


@contextmanager
def _loss_named(rec: Recorder, fn: str, loss_modules: set[str]) -> Iterator[None]:
    """A loss function called outside a loss module (a model computing its own loss after its head, or the
    default step's loss): what it makes, and its backward, belong to `(loss):NAME` (analysis.LOSS's row)."""
    original = getattr(torch.nn.functional, fn)

    @functools.wraps(original)
    def named(*args: Any, **kwargs: Any) -> Any:
        top = rec.module_stack[-1]
        if torch.compiler.is_compiling() or top.startswith(LOSS) or top in loss_modules:
            return original(*args, **kwargs)
        with rec.in_module(f"{LOSS}:{fn}"):
            out = original(*args, **kwargs)
        if rec.phase in (Phase.FORWARD, Phase.LOSS) and torch.is_grad_enabled():
            claim(rec.node_module, out, f"{LOSS}:{fn}")
        return out

    setattr(torch.nn.functional, fn, named)
    try:
        yield
    finally:
        setattr(torch.nn.functional, fn, original)


@contextmanager
def _resizes_seen(rec: Recorder) -> Iterator[None]:
    """`UntypedStorage.resize_` changes a storage's bytes without a dispatched op (FSDP2 frees its unsharded
    parameters with `resize_(0)` and allocates them again with `resize_(n)`): tell the recorder."""
    original = torch.UntypedStorage.resize_

    @functools.wraps(original)
    def resize(storage: torch.UntypedStorage, size: int) -> Any:
        out = original(storage, size)
        rec.sweep()
        rec.resized(storage)
        return out

    torch.UntypedStorage.resize_ = resize  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.UntypedStorage.resize_ = original  # type: ignore[method-assign]


def _optimizer_pre(rec: Recorder) -> Any:
    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        rec.enter(Phase.OPTIMIZER)
        rec.gradients()

    return hook


def _optimizer_post(rec: Recorder) -> Any:
    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        rec.optimizer_state(optimizer)

    return hook


_KEPT = (Phase.RECOMPUTE, Phase.PREFILL, Phase.DECODE)  # phases a module's forward runs inside of


def _pre_hook(rec: Recorder, name: str) -> Any:
    def hook(module: nn.Module, args: Any) -> None:
        if torch.compiler.is_compiling():
            return  # Dynamo traces through it: a compiled region's modules leave no trace of their own
        rec.push_module(name)
        if rec.phase is not Phase.RECOMPUTE and in_engine():
            rec.sweep()
            rec.start_recompute()
        elif rec.phase not in _KEPT:
            rec.enter(Phase.FORWARD)  # a forward starts: the model's, or a submodule a user's step calls
        rec.note_input(name, args)

    return hook


def _post_hook(rec: Recorder, name: str) -> Any:
    def hook(module: nn.Module, args: Any, out: Any) -> None:
        if torch.compiler.is_compiling():
            return
        if sys.exc_info()[1] is not None:
            rec.fail_in(name or type(module).__name__)
        rec.leave_module()
        rec.note_output(name, out)
        if rec.phase is Phase.FORWARD and torch.is_grad_enabled():
            claim(rec.node_module, out, name)
        if not name and rec.phase is Phase.FORWARD and sys.exc_info()[1] is None:
            rec.outputs(out)
            if torch.is_grad_enabled():
                rec.enter(Phase.LOSS)  # the model returned: what runs until backward is the loss

    return hook


def _pack(rec: Recorder) -> Any:
    def pack(t: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return t
        rec.mark_tensor(t, Category.ACTIVATION)
        return t

    return pack


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t


# Called from a compiled region (its module's hooks, the tensors it saves), they run as Python, never compiled
not_compiled(_pre_hook(Recorder.__new__(Recorder), ""), _post_hook(Recorder.__new__(Recorder), ""))
not_compiled(_pack(Recorder.__new__(Recorder)), _unpack)


@contextmanager
def _compiled_buffer_of(module: nn.Module) -> Iterator[None]:
    rec = active_recorder()
    with rec.owning(module) if rec is not None else nullcontext():
        yield


own_buffers_with(_compiled_buffer_of)
