"""The recorder's one dispatch mode: every op of the step runs here (the data-dependent resolver, the meta
cache), and its outputs, buffers, frees and FLOPs go to the recorder."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch._C import DispatchKey
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode

from .data_dependent import active_resolver
from .meta_cache import MetaCache
from .recorder import Recorder


@functools.cache
def _wrapped(types: tuple[type, ...]) -> bool:
    return any(_wrapper(t) for t in types)


def _wrapper(cls: type) -> bool:
    """A tensor subclass dispatching to inner tensors (DTensor); not the simulation's FakeTensor."""
    return cls not in (torch.Tensor, FakeTensor) and "__torch_dispatch__" in vars(cls)


class RecordingMode(TorchDispatchMode):
    """The simulation's one dispatch mode: each op runs through the data-dependent resolver (when
    `resolving` is active), its meta computation replayed where the cache has it, then is recorded."""

    def __init__(self, rec: Recorder) -> None:
        super().__init__()
        self.rec = rec
        self.resolver = active_resolver()
        values = self.resolver.values if self.resolver is not None else None
        through = self.resolver.passes_through if self.resolver is not None else lambda func: True
        self.cache = MetaCache(through, values.holds if values is not None else lambda storage: False)
        self._composite: dict[int, tuple[Any, bool, bool]] = {}  # by id: the op, composite, a view

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """No `torch._disable_dynamo` wrapper around each dispatch (a step's ~56k ops pay for it): nothing
        compiles under the simulation's mode."""
        return False

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        """Dynamo compiles under it (the mode is off while it traces) and the compiled code's ops come
        here when it runs, as the ops between graph breaks do."""
        return True

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if types and _wrapped(tuple(types)):  # plain tensors alone come with no types
            return NotImplemented  # a wrapper (DTensor) runs its local ops, which come back here
        kwargs = kwargs or {}
        known = self._composite.get(id(func))
        if known is None:  # by id, once per op: an OpOverload hashes in Python
            view = _view(func) and self.rec.tracks_only(func)
            known = self._composite[id(func)] = (func, _composite(func), view)
        if known[1]:  # under inference_mode composite ops reach the mode whole: run their parts
            with self:  # ATen's own C++ decomposition, not a Python one (dropout's clones its input)
                return func._op_dk(DispatchKey.CompositeImplicitAutograd, *args, **kwargs)
        rec = self.rec
        if rec.dead:  # `rec.sweep()`, called only when a storage died since the last op
            rec.sweep()
        if known[2] and (self.resolver is None or self.resolver.runs_as_is(func, args, kwargs)):
            # a view (a third of a step's ops: t, view, detach, transpose, slice): the cache never replays
            # one and the resolver runs it as it is; of a storage the recorder holds, nothing to record
            out = func(*args, **kwargs)
            if not rec.holds(out):
                rec.on_op(func, args, kwargs, out)
            return out
        out = self.cache.run(func, args, kwargs, lambda: self._run(func, args, kwargs))
        rec.on_op(func, args, kwargs, out)
        return out

    def _run(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        if self.resolver is None:
            return func(*args, **kwargs)
        return self.resolver.dispatch(func, args, kwargs)


def _view(func: Any) -> bool:
    """An aten op whose outputs all alias its inputs, writing none (`MetaCache` never replays one)."""
    if not isinstance(func, torch._ops.OpOverload) or func.namespace != "aten":
        return False
    schema = func._schema
    returns = schema.returns
    return (
        not schema.is_mutable
        and bool(returns)
        and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)
    )


@functools.cache
def _composite(func: Any) -> bool:
    """An op the CPU runs as its CompositeImplicitAutograd decomposition. Autograd's key decomposes such ops
    before any dispatch mode sees them, except under inference_mode, which skips that key: there the parts
    (convolution, native_batch_norm, addmm) must still meet the recorder and the device rules."""
    name = func.name() if hasattr(func, "name") else ""
    if name.startswith("prim::"):  # TorchScript's prim ops (prim::device, which DDP's reducer runs)
        return False
    return bool(name) and (
        torch._C._dispatch_has_kernel_for_dispatch_key(name, DispatchKey.CompositeImplicitAutograd)
        and not torch._C._dispatch_has_kernel_for_dispatch_key(name, DispatchKey.CPU)
    )
