"""Hugging Face's `generate()` under memtrace: the loop runs exactly its bound, by one documented rule.

The rule: while memtrace runs a step (simulated, and in `verify`'s real run alike, so both sides allocate the
same), the stopping criteria that read the generated tokens (`EosTokenCriteria`, `StopStringCriteria`) run
as they are, so their small outputs are recorded, and their value is then *known* to be all False: on meta
through the resolver's known values, on real tensors by zeroing the output in place (no allocation). HF's
own `MaxLengthCriteria` is a constant fill, known, so `unfinished & ~criteria`, `.max() == 0` and `bool()`
are computed on known values and the loop ends exactly at `max_length` (prompt + `max_new_tokens`). EOS
cannot end generation early on meta: the figure is an upper bound for N new tokens.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from .data_dependent import active_resolver

_READS_TOKENS = ("EosTokenCriteria", "StopStringCriteria")


@contextmanager
def known_stops() -> Iterator[None]:
    """The token-reading stopping criteria of `transformers` answer "not done", as the rule above says."""
    module = sys.modules.get("transformers.generation.stopping_criteria")
    if module is None:
        try:
            import transformers.generation.stopping_criteria as module
        except ImportError:
            yield
            return
    with ExitStack() as stack:
        for name in _READS_TOKENS:
            cls = getattr(module, name, None)
            if cls is not None:
                original = cls.__call__
                cls.__call__ = _not_done(original)
                stack.callback(setattr, cls, "__call__", original)
        yield


def _not_done(original: Any) -> Any:
    @functools.wraps(original)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        if isinstance(out, torch.Tensor):
            settle_false(out)
        return out

    return call


def settle_false(out: torch.Tensor) -> None:
    """The criterion's output is all False: a known value on meta, zeros in place on a real tensor."""
    if out.device.type == "meta":
        resolver = active_resolver()
        if resolver is not None:
            resolver.values.put(out, torch.zeros(out.shape, dtype=out.dtype))
        return
    with torch.no_grad():
        out.zero_()
