"""Identical decode steps recorded once: a decode forward met again is replayed from its events.

A decode forward (the whole model's forward in the `decode` phase, under no_grad: generation.py tells it) is
run in full and its effect on the recorder captured: the events it emitted, the storages it made (each
freed inside, left to die as it returns, or returned), the FLOPs of each module and the SDPA choices. When
two forwards in a row, on inputs of the same metadata (shapes, strides, dtypes, the plain values), had the
same effect, the next ones on such inputs are not run: their events are emitted again under new storage
ids, their outputs made as fresh meta tensors, and what died inside is left to die as it did. A 200-token
generation then runs its forward a few times, not 199.

A forward is only captured where nothing in it can depend on more than those metadata: no value read into
a size or Python (`.item()`, a mask, `nonzero`: the resolver counts them), no known value of a storage from
before the forward changed, no storage from before it freed, no library workspace made, nothing it made
kept but its outputs (plain fresh tensors), and no Hugging Face cache object among its arguments (only
tensors and plain values). Python state a forward keeps in its modules (a counter) is not seen: the report
says how many forwards were replayed. The figures are the full simulation's (tests/test_decode_replay.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..core.records import Kind, Phase
from ..devices.cuda.attention import current
from .data_dependent import Resolver
from .recorder import Born, Recorder, Replayed

ENABLED = True  # tests switch it off to hold the replayed figures against the full simulation
_META = torch.device("meta")
_VALUES = (int, float, bool, str, type(None), torch.dtype, torch.device)
_Spec = tuple[torch.Size, tuple[int, ...], torch.dtype]


@dataclass(frozen=True)
class _Forward:
    """What one decode forward did to the recorder, its storages numbered by birth."""

    events: tuple[Replayed, ...]
    born: tuple[Born, ...]
    survivors: tuple[int, ...]  # storages alive as it returned, by birth: outputs, or dying then
    outputs: tuple[tuple[int, _Spec], ...]  # per output leaf: its storage and layout
    tree: Any
    flops: tuple[tuple[str, int], ...]
    choices: tuple[Any, ...]


@dataclass
class _Seen:
    forward: _Forward
    repeated: bool = False  # the last two forwards on these inputs did the same


class DecodeReplay:
    """The model's forward, replayed where the rule above allows; `replayed` counts the forwards not run."""

    def __init__(self, rec: Recorder, resolver: Resolver | None) -> None:
        self.rec, self.resolver = rec, resolver
        self.seen: dict[tuple[Any, ...], _Seen] = {}
        self.replayed: dict[int, int] = {}  # iteration -> forwards replayed

    def call(self, forward: Callable[..., Any], args: Any, kwargs: dict[str, Any]) -> Any:
        rec = self.rec
        if not ENABLED or rec.phase is not Phase.DECODE or torch.is_grad_enabled() or self.resolver is None:
            return forward(*args, **kwargs)
        key = _key(rec.iteration, args, kwargs)
        if key is None:
            return forward(*args, **kwargs)
        seen = self.seen.get(key)
        if seen is not None and seen.repeated:
            self.replayed[rec.iteration] = self.replayed.get(rec.iteration, 0) + 1
            return self._replay(seen.forward)
        rec.sweep()  # what died before the forward is freed first, as its first op would
        before = _Before(rec, self.resolver)
        out = forward(*args, **kwargs)
        found = before.captured(out)
        if found is None:
            self.seen.pop(key, None)
        elif seen is not None and seen.forward == found:
            seen.repeated = True
        else:
            self.seen[key] = _Seen(found)
        return out

    def _replay(self, fwd: _Forward) -> Any:
        rec = self.rec
        rec.sweep()
        sids = rec.replayed(fwd.born, fwd.events)
        for module, flops in fwd.flops:
            key = (rec.iteration, module)
            rec.module_flops[key] = rec.module_flops.get(key, 0) + flops
        if fwd.choices:
            current().choices.extend(fwd.choices)
        returned = dict(fwd.outputs)
        made: dict[int, torch.Tensor] = {}
        with _disable_current_modes():
            for index in fwd.survivors:  # in birth order, as the forward's storages became live
                spec = returned.get(index)
                if spec is not None:
                    t = torch.empty_strided(spec[0], spec[1], dtype=spec[2], device=_META)
                else:  # died as the forward returned: swept at the next op, as then
                    t = torch.empty(fwd.born[index].nbytes, dtype=torch.uint8, device=_META)
                made[index] = t
                rec.adopt(t.untyped_storage(), sids[index])
        leaves = [made[index] for index, _ in fwd.outputs]
        made.clear()
        return tree_unflatten(leaves, fwd.tree)


class _Before:
    """The recorder's and the resolver's state as a forward starts, to capture what it did."""

    def __init__(self, rec: Recorder, resolver: Resolver) -> None:
        self.rec, self.resolver = rec, resolver
        self.events = len(rec.events)
        self.flops = {m: f for (it, m), f in rec.module_flops.items() if it == rec.iteration}
        self.choices = len(current().choices)
        self.persistent = len(rec.persistent)
        self.state = _resolver_state(resolver)
        self.outside = {key for key, live in rec.live.items() if not live.ref.expired()}
        resolver.values.touched = set()

    def captured(self, out: Any) -> _Forward | None:
        rec, resolver = self.rec, self.resolver
        touched, resolver.values.touched = resolver.values.touched or set(), None
        if touched & self.outside or _resolver_state(resolver) != self.state:
            return None
        if len(rec.persistent) != self.persistent or len(current().choices) < self.choices:
            return None
        born: dict[int, int] = {}  # sid -> index
        records: list[Born] = []
        events = []
        for ev in rec.events[self.events :]:
            if ev.kind is Kind.ALLOC:
                if ev.storage in born:
                    return None
                born[ev.storage] = len(records)
                m = rec.meta[ev.storage]
                records.append(Born(m.nbytes, m.op, m.module, m.node, m.shape, m.dtype, m.category))
            elif ev.storage not in born:
                return None  # a storage from before the forward freed inside it
            events.append((ev.kind, born[ev.storage], ev.nbytes, ev.op, ev.module, ev.node))
        freed = {e[1] for e in events if e[0] is not Kind.ALLOC}
        alive = {live.sid: live for live in rec.live.values()}
        survivors = [i for sid, i in born.items() if i not in freed]
        leaves, tree = tree_flatten(out)
        outputs = _outputs(leaves, rec, born)
        if outputs is None:
            return None
        returned = {i for i, _ in outputs}
        sids = {i: sid for sid, i in born.items()}
        for i in survivors:
            live = alive.get(sids[i])
            if live is None or (not live.ref.expired() and i not in returned):
                return None  # kept beyond its outputs (a module attribute), or not watched
        if returned - set(survivors):
            return None
        after = {m: f for (it, m), f in rec.module_flops.items() if it == rec.iteration}
        flops = tuple((m, f - self.flops.get(m, 0)) for m, f in after.items() if f != self.flops.get(m, 0))
        choices = tuple(current().choices[self.choices :])
        return _Forward(tuple(events), tuple(records), tuple(survivors), outputs, tree, flops, choices)


def _outputs(leaves: list[Any], rec: Recorder, born: dict[int, int]) -> tuple[tuple[int, _Spec], ...] | None:
    """Each output leaf's storage (one it made) and layout: plain fresh meta tensors only."""
    found: list[tuple[int, _Spec]] = []
    for t in leaves:
        if type(t) is not torch.Tensor or not t.is_meta or t.requires_grad or t._is_view():
            return None
        sid = rec.storage_id(t)
        if sid is None or sid not in born or t.storage_offset() != 0 or t.layout != torch.strided:
            return None
        with _disable_current_modes():  # a probe, not the step's: unrecorded
            probe = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=_META)
        if probe.untyped_storage().nbytes() != t.untyped_storage().nbytes():
            return None
        found.append((born[sid], (t.shape, t.stride(), t.dtype)))
    if len({i for i, _ in found}) != len(found):
        return None
    return tuple(found)


def _resolver_state(resolver: Resolver) -> tuple[Any, ...]:
    """What a forward that read no value leaves as it was: the reads, the assumptions, the loops."""
    loops = resolver.loops
    return resolver.reads, len(resolver.used), loops.serials, sum(r for _, r in loops.reads.values())


def _key(iteration: int, args: Any, kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    """The forward's inputs' metadata, or None where an argument is not a plain tensor or value."""
    leaves, tree = tree_flatten((args, kwargs))
    parts: list[Any] = [iteration, tree]
    storages: dict[int, int] = {}
    for x in leaves:
        if type(x) is torch.Tensor or type(x) is nn.Parameter:
            if not x.is_meta:
                return None
            shared = storages.setdefault(x.untyped_storage()._cdata, len(storages))
            parts.append((x.shape, x.stride(), x.dtype, x.storage_offset(), x.requires_grad, shared))
        elif type(x) in _VALUES and x == x:
            parts.append((type(x), x))
        else:
            return None
    return tuple(parts)
