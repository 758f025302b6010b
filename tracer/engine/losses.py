"""The default step's loss, as `--loss` names it, computed on the model's output.

`auto` takes the output's own loss (a Hugging Face `ModelOutput.loss`, a dict's `loss`) and falls back to the
sum of the floating outputs. `ce` and `mse` make their targets at the first call, shaped from the output, and
keep them in the Batch, so from the second step on they are part of the batch as a data loader's labels are.
A user function `FILE.py:FUNC` is called as `FUNC(output, *targets)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..core.errors import MemtraceError
from ..core.specs import LossSpec
from .batch import Batch, floating_leaves

LossFn = Callable[[Any, Batch], torch.Tensor]


def make_loss(spec: LossSpec | None) -> LossFn:
    spec = spec or LossSpec()
    if spec.is_function:
        return _user_loss(spec.name)
    if spec.name == "ce":
        return lambda out, batch: cross_entropy(out, batch, spec.class_dim)
    return {"auto": auto_loss, "sum": sum_loss, "mean": mean_loss, "mse": mse_loss}[spec.name]


def _trainable(out: Any) -> list[torch.Tensor]:
    leaves = [t for t in floating_leaves(out) if t.requires_grad]
    if not leaves:
        raise MemtraceError("the model's output has no floating tensor that requires grad: nothing to train")
    return leaves


def own_loss(out: Any) -> torch.Tensor | None:
    """The loss a model computed itself (from `labels`): `out.loss` or `out["loss"]`."""
    value = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
    return value if isinstance(value, torch.Tensor) and value.requires_grad else None


def auto_loss(out: Any, batch: Batch) -> torch.Tensor:
    own = own_loss(out)
    return own if own is not None else sum_loss(out, batch)


def _reduced(out: Any, reduce: str) -> torch.Tensor:
    """The floating outputs that require grad, each reduced (`sum`, `mean`), added up in order."""
    leaves = _trainable(out)
    loss: torch.Tensor = getattr(leaves[0], reduce)()
    for t in leaves[1:]:
        loss = loss + getattr(t, reduce)()
    return loss


def sum_loss(out: Any, batch: Batch) -> torch.Tensor:
    return _reduced(out, "sum")


def mean_loss(out: Any, batch: Batch) -> torch.Tensor:
    return _reduced(out, "mean")


def _made(batch: Batch, key: str, like: torch.Tensor, shape: tuple[int, ...], classes: int) -> torch.Tensor:
    """A target made once and kept: empty on meta; on real tensors class ids in [0, classes) or normals."""
    found = batch.made.get(key)
    if found is not None and tuple(found.shape) == shape:
        return found
    gen = torch.Generator().manual_seed(1)
    if like.device.type == "meta":
        dtype = torch.int64 if classes else like.dtype
        target = torch.empty(shape, dtype=dtype, device="meta")
    elif classes:
        target = torch.randint(0, classes, shape, generator=gen).to(like.device)
    else:
        target = torch.randn(shape, generator=gen).to(dtype=like.dtype, device=like.device)
    batch.made[key] = target
    return target


def class_dim_of(ndim: int, override: int | None) -> int:
    """2-D (N, C) and 3-D (B, S, V): the last dim; 4-D and more (N, C, H, W): dim 1, as F.cross_entropy."""
    if override is not None:
        if not -ndim <= override < ndim:
            raise MemtraceError(f"--loss-class-dim {override} is out of range for a {ndim}-D output")
        return override % ndim
    return ndim - 1 if ndim <= 3 else 1


def cross_entropy(out: Any, batch: Batch, class_dim: int | None) -> torch.Tensor:
    logits = _trainable(out)[0]
    if logits.dim() == 0:
        raise MemtraceError("--loss ce needs an output with a class dimension, got a scalar")
    dim = class_dim_of(logits.dim(), class_dim)
    classes = int(logits.shape[dim])
    if dim == logits.dim() - 1 and logits.dim() > 1:
        flat = logits.reshape(-1, classes)
        target = _made(batch, "ce", logits, (flat.shape[0],), classes)
        return F.cross_entropy(flat, target)
    moved = logits if dim == min(1, logits.dim() - 1) else logits.movedim(dim, 1)
    shape = tuple(moved.shape[:1]) + tuple(moved.shape[2:]) if moved.dim() > 1 else ()
    return F.cross_entropy(moved, _made(batch, "ce", logits, shape, classes))


def mse_loss(out: Any, batch: Batch) -> torch.Tensor:
    pred = _trainable(out)[0]
    return F.mse_loss(pred, _made(batch, "mse", pred, tuple(pred.shape), 0))


def _user_loss(target: str) -> LossFn:
    from .loader import load_object

    fn = load_object(target, "--loss", fresh=True)
    if not callable(fn):
        raise MemtraceError(f"--loss {target!r} is not callable")

    def loss(out: Any, batch: Batch) -> torch.Tensor:
        value = fn(out, *batch.targets)
        if not isinstance(value, torch.Tensor) or not value.requires_grad:
            raise MemtraceError(
                f"--loss {target} returned {type(value).__name__}, not a tensor that requires grad"
            )
        return value

    return loss
