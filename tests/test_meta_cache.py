"""The meta cache (engine/meta_cache.py): a hit rebuilds fresh outputs without the meta computation, and a
key whose first outputs cannot be rebuilt so (`_unsafe_view`'s share its input's storage) always runs."""

from __future__ import annotations

from typing import Any

import torch

from memtrace.tracer.engine.meta_cache import MetaCache

aten = torch.ops.aten


def _cache() -> tuple[MetaCache, list[Any]]:
    return MetaCache(lambda func: True, lambda storage: False), []


def _run(cache: MetaCache, calls: list[Any], func: Any, *args: Any) -> Any:
    def compute() -> Any:
        calls.append(func)
        return func(*args)

    return cache.run(func, args, {}, compute)


def test_fresh_outputs_are_rebuilt_on_a_hit() -> None:
    cache, calls = _cache()
    a, b = torch.empty(4, 8, device="meta"), torch.empty(8, 3, device="meta")
    first = _run(cache, calls, aten.mm.default, a, b)
    again = _run(cache, calls, aten.mm.default, torch.empty(4, 8, device="meta"), b)
    assert calls == [aten.mm.default]  # the second ran no meta kernel
    assert (again.shape, again.stride(), again.dtype) == (first.shape, first.stride(), first.dtype)
    assert again.untyped_storage()._cdata != first.untyped_storage()._cdata
    _run(cache, calls, aten.mm.default, torch.empty(5, 8, device="meta"), b)  # another shape: a miss
    assert calls == [aten.mm.default] * 2


def test_outputs_sharing_an_input_storage_always_run() -> None:
    cache, calls = _cache()
    shape = [32]
    for _ in range(3):
        x = torch.empty(4, 8, device="meta")
        out = _run(cache, calls, aten._unsafe_view.default, x, shape)
        assert out.untyped_storage()._cdata == x.untyped_storage()._cdata  # the input's storage, each time
    assert calls == [aten._unsafe_view.default] * 3
    assert (cache.hits, cache.misses) == (0, 1)  # judged once, then run as it is


def test_in_place_pointwise_returns_its_input() -> None:
    cache, calls = _cache()
    for _ in range(2):
        x, y = torch.empty(3, device="meta"), torch.empty(3, device="meta")
        assert _run(cache, calls, aten.mul_.Tensor, x, y) is x
    assert calls == [aten.mul_.Tensor] and cache.hits == 1
