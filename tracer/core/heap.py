"""The cyclic garbage collector, paused while a pass makes many records and frees none of them.

A full collection walks every object of the process (torch, transformers, the model, a 70B step's trace): the
allocations of such a pass (the trace's records, the analysis, the JSON of the result) would set one off
for nothing to collect.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic collection while the block runs; as it was after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
