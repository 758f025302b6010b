"""The CPU generator's state, as checkpointing stashes it: a 5056-byte CPU tensor per checkpointed call.

`torch.get_rng_state()` makes its tensor without passing the dispatcher, so the recorder would not see it. On
the CPU target the copy is real CPU memory, live until the checkpoint's backward; on CUDA it is host memory
and does not count. A non-reentrant checkpoint's recomputation runs inside `torch.random.fork_rng`, which
stashes the CPU state once more for as long as it runs (5056 bytes on the CPU); for meta tensors fork_rng
does nothing (`device_type == "meta"`), so on the CPU target the stash is made here as on the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ...core.registry import patch


@patch("cpu", "rng_state")
@contextlib.contextmanager
def cpu_rng_state() -> Iterator[None]:
    original = torch.get_rng_state

    def get_rng_state() -> torch.Tensor:
        return original().clone()  # the clone passes the dispatcher and is recorded

    fork = torch.random.fork_rng
    torch.get_rng_state = get_rng_state
    torch.random.fork_rng = _forking_on_meta(fork)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.get_rng_state = original
        torch.random.fork_rng = fork


def _forking_on_meta(fork: Callable[..., Any]) -> Callable[..., Any]:
    def fork_rng(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("device_type") == "meta" and kwargs.get("enabled", True):
            return _cpu_state_stashed()
        return fork(*args, **kwargs)

    return fork_rng


@contextlib.contextmanager
def _cpu_state_stashed() -> Iterator[None]:
    """`fork_rng` on the CPU: the generator's state copied on entry, held while the block runs."""
    state = torch.get_rng_state()
    try:
        yield
    finally:
        del state
