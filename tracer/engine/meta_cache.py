"""Meta computations replayed: an op met again with the same inputs' metadata gets its outputs without
running its meta kernel (PyTorch's Python decompositions cost most of a step's simulation).

The key is the op overload and, per argument, a tensor's shape, strides, dtype, storage offset and which
earlier argument shares its storage, or a plain value with its type (`True`, `1` and `1.0` differ). Only
plain meta tensors take part (no FakeTensor, no CPU tensor), none with a known value (data_dependent.py).
Two kinds of op are replayed, after their first run showed the outputs:

- functional ops whose outputs are fresh: storages of their own, no view, each the exact size
  `empty_strided` gives; a hit makes them with `torch.empty_strided(..., device="meta")`;
- pointwise in-place ops writing their first argument only (`mul_`, `addcmul_`, `lerp_`): a hit returns it.

Views, other in-place and out= ops, randomness (`nondeterministic_seeded`), data-dependent outputs and the
ops the resolver counts or keeps values of always run. Only the meta computation is skipped: the recorder
sees every op, its outputs, its device rule's buffers and its frees as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

_META = torch.device("meta")
_PLAIN = (torch.Tensor, nn.Parameter)
_VALUES = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)
_SKIP = (torch.Tag.nondeterministic_seeded, torch.Tag.dynamic_output_shape, torch.Tag.data_dependent_output)
_FRESH, _IN_PLACE = "fresh", "in_place"
Spec = tuple[torch.Size, tuple[int, ...], torch.dtype]


class _Outputs(NamedTuple):
    """A functional op's fresh outputs: one tensor, or a tuple or list of tensors (and Nones)."""

    specs: tuple[Spec | None, ...]
    container: type | None  # None: a single tensor

    def build(self) -> Any:
        made = [None if s is None else _empty(s) for s in self.specs]
        return made[0] if self.container is None else self.container(made)


def _empty(spec: Spec) -> torch.Tensor:
    return torch.empty_strided(spec[0], spec[1], dtype=spec[2], device=_META)


Entry = str | _Outputs
_ALWAYS_RUN = "always run"  # a key whose outputs the first run showed cannot be replayed
Known = Callable[[int], bool]  # whether a storage (its _cdata) may have known values


class MetaCache:
    """Outputs by op and inputs' metadata, for the ops `replayable` allows."""

    def __init__(self, replayable: Callable[[Any], bool], known: Known) -> None:
        self.replayable, self.known = replayable, known
        self.entries: dict[tuple[Any, ...], Entry] = {}
        self.hits = self.misses = 0
        # per op, by id (an OpOverload hashes in Python): the op and its kind, None where it always runs
        self._kinds: dict[int, tuple[Any, str | None]] = {}

    def run(self, func: Any, args: Any, kwargs: dict[str, Any], compute: Callable[[], Any]) -> Any:
        """The op's outputs: replayed on a hit, else computed (and kept when they can be replayed). A key
        whose first outputs cannot be replayed (`_unsafe_view`'s, which share their input's storage) is
        kept as such, and its op always runs."""
        known = self._kinds.get(id(func))
        if known is None:
            kind = _kind(func)
            kind = kind if kind is not None and self.replayable(func) else None
            known = self._kinds[id(func)] = (func, kind)
        kind = known[1]
        key = self._key(func, args, kwargs) if kind is not None else None
        if kind is None or key is None:
            return compute()
        entry = self.entries.get(key)
        if entry is not None:
            if entry is _ALWAYS_RUN:
                return compute()
            self.hits += 1
            return entry.build() if isinstance(entry, _Outputs) else args[0]
        self.misses += 1
        out = compute()
        found = _entry(kind, (*args, *kwargs.values()), out)
        self.entries[key] = _ALWAYS_RUN if found is None else found
        return out

    def _key(self, func: Any, args: Any, kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
        parts: list[Any] = [func]
        storages: dict[int, int] = {}
        if not self._parts(args, parts, storages):
            return None
        for name, value in kwargs.items():
            parts.append(name)
            if not self._parts((value,), parts, storages):
                return None
        return tuple(parts) if storages else None

    def _parts(self, values: Any, parts: list[Any], storages: dict[int, int]) -> bool:
        """Append each value's part of the key; False where a value cannot take part."""
        for x in values:
            kind = type(x)
            if kind in _PLAIN:
                if not x.is_meta:
                    return False
                storage = x.untyped_storage()._cdata
                if self.known(storage):
                    return False
                shared = storages.setdefault(storage, len(storages))
                parts.append((x.shape, x.stride(), x.dtype, x.storage_offset(), shared))
            elif kind is list or kind is tuple:
                parts.append((kind, len(x)))
                if not self._parts(x, parts, storages):
                    return False
            elif kind in _VALUES and x == x:  # NaN never meets itself again
                parts.append((kind, x))
            else:
                return False
        return True


@functools.cache
def _kind(func: Any) -> str | None:
    """Whether an aten op can be replayed: fresh outputs, or a pointwise write of its first argument."""
    if not isinstance(func, torch._ops.OpOverload) or func.namespace != "aten":
        return None
    if any(tag in func.tags for tag in _SKIP) or torch.Tag.inplace_view in func.tags:
        return None
    schema = func._schema
    written = [i for i, a in enumerate(schema.arguments) if _writes_to(a)]
    if not schema.is_mutable and not written:
        return None if any(r.alias_info is not None for r in schema.returns) else _FRESH
    returns = schema.returns
    first_only = written == [0] and len(returns) == 1 and returns[0].alias_info is not None
    if first_only and torch.Tag.pointwise in func.tags and func._schema.arguments[0].name == "self":
        return _IN_PLACE
    return None


def _writes_to(arg: Any) -> bool:
    return arg.alias_info is not None and bool(arg.alias_info.is_write)


def _entry(kind: str, args: Any, out: Any) -> Entry | None:
    """What a hit replays, if the first run's outputs allow it."""
    if kind == _IN_PLACE:
        return _IN_PLACE if out is args[0] else None
    inputs = {x.untyped_storage()._cdata for x in _tensors(args)}
    if isinstance(out, torch.Tensor):
        spec = _spec(out, inputs)
        return None if spec is None else _Outputs((spec,), None)
    if type(out) not in (tuple, list) or not out:
        return None
    specs = tuple(None if t is None else _spec(t, inputs) for t in out)
    if any(s is None and t is not None for s, t in zip(specs, out, strict=True)):
        return None
    outs = [t for t in out if t is not None]
    if not outs or len({t.untyped_storage()._cdata for t in outs}) != len(outs):
        return None
    return _Outputs(specs, type(out))


def _spec(t: Any, inputs: set[int]) -> Spec | None:
    """A fresh output's shape, strides and dtype: none when `empty_strided` would not make it alike."""
    if type(t) is not torch.Tensor or not t.is_meta or t.layout != torch.strided or t._is_view():
        return None
    storage = t.untyped_storage()
    if storage._cdata in inputs or t.storage_offset() != 0 or t.is_conj() or t.is_neg():
        return None
    if torch._C._storage_Use_Count(storage._cdata) != 2:  # the tensor's and this probe's
        return None
    made = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=_META)
    return (t.shape, t.stride(), t.dtype) if made.untyped_storage().nbytes() == storage.nbytes() else None


def _tensors(args: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for x in args:
        if isinstance(x, torch.Tensor):
            found.append(x)
        elif isinstance(x, (list, tuple)):
            found.extend(_tensors(x))
    return found


class Replaying(TorchDispatchMode):
    """Ops replayed from a cache of their own, nothing recorded: a forward run only to see what it does
    (prepare.py's probe for parameters made in forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = MetaCache(lambda func: True, lambda storage: False)

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # as RecordingMode: no dynamo wrapper around each dispatch

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        return self.cache.run(func, args, kwargs, lambda: func(*args, **kwargs))
