"""The CPU generator's state, as checkpointing stashes it: a 5056-byte CPU tensor per checkpointed call.

`torch.get_rng_state()` makes its tensor without passing the dispatcher, so the recorder would not see it. On
the CPU target the copy is real CPU memory, live until the checkpoint's backward; on CUDA it is host memory
and does not count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ...core.registry import patch


@patch("cpu", "rng_state")
@contextlib.contextmanager
def cpu_rng_state() -> Iterator[None]:
    original = torch.get_rng_state

    def get_rng_state() -> torch.Tensor:
        return original().clone()  # the clone passes the dispatcher and is recorded

    torch.get_rng_state = get_rng_state
    try:
        yield
    finally:
        torch.get_rng_state = original
