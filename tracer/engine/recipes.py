"""Training recipes applied to the model and the step: pure low precision, activation checkpointing,
mixed precision, gradient accumulation. Applied here and only here, the same way for the simulation on meta
and for the reference run on real tensors."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..core.errors import MemtraceError
from ..meta.compiled import CompileOptions, compile_whole
from .batch import Batch
from .program import ContextFactory

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PARAM_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Recipe:
    """What the user changes about the step. The default is plain fp32 training."""

    amp: str | None = None
    dtype: str | None = None
    checkpoint: tuple[str, ...] = ()
    accumulate: int = 1
    compile: CompileOptions | None = None  # --compile, --compile-mode, --compile-backend

    def __post_init__(self) -> None:
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise MemtraceError(f"unknown --amp {self.amp!r} (bf16 or fp16)")
        if self.dtype is not None and self.dtype not in PARAM_DTYPES:
            raise MemtraceError(f"unknown --dtype {self.dtype!r} (bf16, fp16 or fp32)")
        if self.accumulate < 1:
            raise MemtraceError(f"--accumulate must be at least 1, got {self.accumulate}")

    def text(self) -> str:
        parts = []
        if self.amp:
            parts.append(f"amp {self.amp}")
        if self.dtype:
            parts.append(f"params {self.dtype}")
        if self.checkpoint:
            parts.append("checkpoint " + ",".join(self.checkpoint))
        if self.accumulate > 1:
            parts.append(f"accumulate {self.accumulate}")
        if self.compile is not None:
            parts.append(f"compiled ({self.compile.backend}, mode {self.compile.mode})")
        return "; ".join(parts) or "fp32"


def checkpoint_targets(model: nn.Module, globs: tuple[str, ...]) -> list[str]:
    """Outermost modules whose qualified name matches a glob; a glob that matches nothing is an error.
    `auto` (alone, what `--hf-args`' `gradient_checkpointing` asks) is each block as Hugging Face's
    `gradient_checkpointing_enable` checkpoints them: every `GradientCheckpointingLayer` (transformers'
    decoder layers), else the blocks FSDP's auto wrap shards (`_no_split_modules`, else the largest
    ModuleList's)."""
    if globs == ("auto",):
        return _auto_checkpoint(model)
    names = [n for n, _ in model.named_modules() if n]
    chosen: list[str] = []
    for glob in globs:
        hits = [n for n in names if fnmatchcase(n, glob)]
        if not hits:
            raise MemtraceError(f"--checkpoint {glob!r} matches no module (names look like {names[:3]})")
        chosen += [n for n in hits if n not in chosen]
    return [n for n in chosen if not any(n.startswith(c + ".") for c in chosen if c != n)]


def _auto_checkpoint(model: nn.Module) -> list[str]:
    from .distributed import auto_wrap

    layer = getattr(sys.modules.get("transformers.modeling_layers"), "GradientCheckpointingLayer", None)
    hits = [n for n, m in model.named_modules() if n and layer is not None and isinstance(m, layer)]
    hits = hits or auto_wrap(model)[1]
    if not hits:
        raise MemtraceError("--checkpoint auto found no block (no decoder layer, no ModuleList): name a glob")
    return [n for n in hits if not any(n.startswith(c + ".") for c in hits if c != n)]


def wrap_checkpoint(model: nn.Module, globs: tuple[str, ...]) -> list[str]:
    """Make each target module's forward run under non-reentrant checkpointing."""
    targets = checkpoint_targets(model, globs)
    for name in targets:
        module = model.get_submodule(name)
        module.forward = _checkpointed(module.forward, name)  # type: ignore[method-assign]
    return targets


def _checkpointed(forward: Callable[..., Any], name: str) -> Callable[..., Any]:
    def body(*args: Any, **kwargs: Any) -> Any:
        from .hooks import in_engine
        from .recorder import active_recorder

        rec = active_recorder()
        if rec is not None and in_engine():
            with rec.recomputing(name):  # the recomputation inside backward, when simulating
                return forward(*args, **kwargs)
        return forward(*args, **kwargs)

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        return checkpoint(body, *args, use_reentrant=False, **kwargs)

    return run


def cast_parameters(model: nn.Module, dtype: str | None) -> None:
    if dtype is not None:
        model.to(PARAM_DTYPES[dtype])


def cast_inputs(batch: Batch, dtype: str | None) -> Batch:
    """Pure low-precision training feeds the model floating inputs of its own dtype."""
    return batch.cast(PARAM_DTYPES[dtype] if dtype is not None else None)


def apply_to_model(model: nn.Module, recipe: Recipe) -> list[str]:
    cast_parameters(model, recipe.dtype)
    wrapped = wrap_checkpoint(model, recipe.checkpoint) if recipe.checkpoint else []
    if recipe.compile is not None:  # as the Hugging Face Trainer's torch_compile: the whole model
        compile_whole(model, recipe.compile)
    return wrapped


def real_autocast(device: str, amp: str | None) -> ContextFactory | None:
    """Real torch.autocast, for runs on real tensors (the reference measurement, a real GPU run)."""
    if amp is None:
        return None
    return lambda: torch.autocast(device_type=device, dtype=AMP_DTYPES[amp])


def meta_autocast(device: str, amp: str | None) -> ContextFactory | None:
    """Autocast as the target device applies it, emulated for meta tensors."""
    if amp is None:
        return None
    from ..meta.autocast import emulated_autocast

    return lambda: emulated_autocast(device, AMP_DTYPES[amp])
