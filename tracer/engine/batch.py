"""What one step is fed: positional and keyword inputs, a user loss's targets, targets a built-in loss made.

The same Batch holds meta tensors in the simulation and real tensors in the reference run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Batch:
    args: tuple[torch.Tensor, ...] = ()
    kwargs: dict[str, torch.Tensor] = field(default_factory=dict)
    targets: tuple[torch.Tensor, ...] = ()  # `--target` tensors, passed to a `--loss FILE.py:FUNC`
    made: dict[str, torch.Tensor] = field(default_factory=dict)  # built-in losses' targets, kept across steps

    def tensors(self) -> list[torch.Tensor]:
        """Everything the batch holds: the step's inputs, alive from its start."""
        return [*self.args, *self.kwargs.values(), *self.targets, *self.made.values()]

    def for_step(self) -> tuple[torch.Tensor, ...] | dict[str, torch.Tensor]:
        """What a user's step function receives: the positional inputs, or the named ones as a dict."""
        return dict(self.kwargs) if self.kwargs else tuple(self.args)

    def cast(self, dtype: torch.dtype | None) -> Batch:
        """Floating inputs in `dtype` (pure low-precision training); the rest as it is."""
        if dtype is None:
            return self

        def to(x: torch.Tensor) -> torch.Tensor:
            return x.to(dtype) if x.is_floating_point() else x

        return Batch(
            tuple(to(x) for x in self.args), {k: to(v) for k, v in self.kwargs.items()}, self.targets
        )


def as_batch(inputs: Batch | Sequence[torch.Tensor]) -> Batch:
    """A Batch, or positional inputs made into one."""
    return inputs if isinstance(inputs, Batch) else Batch(tuple(inputs))


def floating_leaves(out: Any) -> Iterator[torch.Tensor]:
    """Tensors in any output structure: tensor, tuple/list, dict, dataclass, HF-style ModelOutput."""
    if isinstance(out, torch.Tensor):
        if out.is_floating_point() or out.is_complex():
            yield out
    elif isinstance(out, dict):
        for v in out.values():
            yield from floating_leaves(v)
    elif isinstance(out, (list, tuple)):
        for v in out:
            yield from floating_leaves(v)
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        for f in dataclasses.fields(out):
            yield from floating_leaves(getattr(out, f.name))
    elif hasattr(out, "to_tuple"):
        yield from floating_leaves(out.to_tuple())
