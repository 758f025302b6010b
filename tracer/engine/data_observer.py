"""The data-dependent values of a real step, counted as it runs (`verify` prints them as `--assume`
options), and the resolver run alone, without a recorder (its unit tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

from ..core.assume import (
    Counts,
    measured_values,
)
from .data_dependent import INDEXED, Resolver, active_resolver, counted, is_bool_index


class _Alone(TorchDispatchMode):
    """The resolver's own dispatch mode, where no recorder runs it (the unit tests of this module)."""

    def __init__(self, resolver: Resolver) -> None:
        super().__init__()
        self.resolver = resolver

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return self.resolver.dispatch(func, args, kwargs or {})


@contextmanager
def resolved_alone() -> Iterator[None]:
    """Inside `resolving`, with no recorder: the resolver runs every op itself."""
    resolver = active_resolver()
    if resolver is None:
        raise RuntimeError("resolved_alone() runs inside resolving()")
    with _Alone(resolver):
        yield


class Observer(TorchDispatchMode):
    """On real tensors: the counts `nonzero` (and each boolean mask of an index) and `torchvision::nms`
    return, and the values of `.item()`, in call order, per step (`mark()` starts the next one)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[tuple[Counts, Counts, Counts]] = []
        self.mark()

    def mark(self) -> None:
        self.steps.append(([], [], []))

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = counted(func)
        nonzero, nms, items = self.steps[-1]
        if name == "nms":
            nms.append(int(out.shape[0]))
        elif name == "nonzero":
            nonzero.append(int(out.shape[0]))
        elif name == "_local_scalar_dense":
            items.append(out)
        elif func in INDEXED:  # a boolean mask among the indices: its count, as a nonzero's
            nonzero.extend(int(m.count_nonzero()) for m in args[1] if is_bool_index(m))
        return out

    def assumptions(self) -> tuple[tuple[str, str], ...]:
        """The `--assume` pairs that replay what was observed."""
        return measured_values(self.steps)
