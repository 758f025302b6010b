"""Dispatch-level recording of every storage allocation and free, with op, module, phase and category.

A private TorchDispatchMode sees every aten op; storages are tracked by weak reference so the recorder never
changes a lifetime. saved_tensors_hooks mark what autograd keeps for backward; module hooks and the autograd
node running in backward give the module (those hooks, and the dispatch mode's installation, are in
hooks.py). The recorder emits events, nothing else.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._pytree import tree_leaves

from ..core.records import Category, Event, Kind, Phase, Trace, make_event, make_storage_info
from ..core.registry import WorkspaceRule
from ..meta.managed import PinnedHost, allocating_host, allocating_managed
from ..meta.tensors import simulated
from .batch import Batch, floating_leaves
from .device_model import DeviceModel
from .flops import count_flops, has_flops, op_name
from .tensor_facts import claim, dtype_name, first_shape, local_tensor, node_seq, sole_owner

_expired = torch.UntypedStorage._expired  # what StorageWeakRef.expired calls, without its two frames
_ADD = torch.ops.aten.add.Tensor  # the backward's sum of two gradients (`_accumulates_in_place`)


@dataclass(slots=True)
class _Live:
    ref: StorageWeakRef
    sid: int
    order: int  # when it became live: sweeps emit frees in this order
    watch: weakref.ref[torch.UntypedStorage]  # its callback reports the storage's death


class Born(NamedTuple):
    """A storage a replayed forward makes: what its record holds."""

    nbytes: int
    op: str
    module: str
    node: str
    shape: tuple[int, ...]
    dtype: str
    category: Category | None


# a replayed event: kind, storage (its index among the storages born), bytes, op, module, node
Replayed = tuple[Kind, int, int, str, str, str]


@dataclass(slots=True)
class _Meta:
    nbytes: int
    op: str
    module: str
    shape: tuple[int, ...]
    dtype: str
    phase: Phase
    iteration: int
    category: Category | None = None
    node: str = ""
    grad_node: int = -1  # the autograd node that allocated it in backward


# a storage's category, first in this order: a static cache kept as a module's buffer (gpt-fast's k_cache) is
# the cache
_ORDER = (
    "PARAMETER KV_CACHE BUFFER INPUT OPTIMIZER_STATE GRADIENT COMMUNICATION ACTIVATION OUTPUT TEMPORARY "
    "WORKSPACE"
)
_PRECEDENCE = {Category[name]: i for i, name in enumerate(_ORDER.split())}


class Recorder:
    """Collects events; use `recording(model)` around the program and pass the recorder as its observer."""

    def __init__(self, device: DeviceModel) -> None:
        self.device = device
        self.cuda = device.name == "cuda"
        self._ops: dict[int, tuple[Any, str, bool, WorkspaceRule | None]] = {}  # by id: op, name, FLOPs, rule
        self.events: list[Event] = []
        self.meta: dict[int, _Meta] = {}
        self.live: dict[int, _Live] = {}  # keyed by the StorageImpl address while alive
        self.baseline: list[int] = []
        self.phase = Phase.SETUP
        self.iteration = 0
        self.module_stack: list[str] = [""]
        self.node_module: dict[int, str] = {}
        self.owners: dict[int, str] = {}
        self.params: list[nn.Parameter] = []
        self.module_flops: dict[tuple[int, str], int] = {}
        self.output_shapes: dict[str, tuple[int, ...]] = {}
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.fx_node = ""
        self.recompute_depth = 0
        self.failed_in = ""  # the innermost module an exception left, for the error message
        self.autograd_fx: dict[int, str] = {}
        self._ids = itertools.count(1)
        self._order = itertools.count()
        self.dead: list[int] = []  # keys of live storages whose last reference went, not yet swept
        self._seq = itertools.count()
        self.persistent: dict[str, int] = {}  # library workspaces kept for the run, by name
        self.estimate: tuple[int, int] | None = None  # the largest unplaced workspace estimate
        self._allocating: Category | None = None  # what new storages are while a caller says (distributed)
        self.managed: dict[int, StorageWeakRef] = {}  # storages in CUDA unified memory (meta/managed.py)
        self.managed_bytes = 0
        self.host = PinnedHost()  # pinned host storages: an offloaded KV cache's copies (meta/managed.py)
        self.module_names: dict[int, str] = {}  # id(module) -> its name, for a compiled region's buffers
        self.compiled_owner: str | None = None  # the module a compiled region's buffer is filed under now

    # --- the narrow API of the hooks, the map and the ranks: no other module assigns these fields ------
    def bind_model(self, owners: dict[int, str], params: list[nn.Parameter]) -> None:
        """The parameters' owning modules (their gradients and optimizer state are filed under them)."""
        self.owners, self.params = owners, params

    def push_module(self, name: str) -> None:
        self.module_stack.append(name)

    def pop_module(self) -> None:
        if len(self.module_stack) > 1:
            self.module_stack.pop()

    @contextmanager
    def in_module(self, name: str) -> Iterator[None]:
        """What runs inside belongs to `name` (a loss function, a node fx inlined from a module)."""
        depth = len(self.module_stack)
        self.module_stack.append(name)
        try:
            yield
        finally:
            del self.module_stack[depth:]

    def name_modules(self, model: nn.Module) -> None:
        """Each module's name, for a compiled region's buffers (`owning`)."""
        self.module_names = {id(m): name for name, m in model.named_modules()}

    @contextmanager
    def owning(self, module: nn.Module) -> Iterator[None]:
        """A compiled region's buffer, made now, is `module`'s (inductor's origins, meta/compiled_layers.py),
        in forward and backward alike."""
        saved, name = self.compiled_owner, self.module_names.get(id(module))
        self.compiled_owner = name if name is not None else saved
        try:
            yield
        finally:
            self.compiled_owner = saved

    def start_recompute(self) -> None:
        """The module just pushed is a checkpoint's forward run again inside backward."""
        self.phase = Phase.RECOMPUTE
        self.recompute_depth = len(self.module_stack)

    def leave_module(self) -> None:
        """A module's forward returned: a recomputation ends with its outermost module."""
        if self.phase is Phase.RECOMPUTE and len(self.module_stack) == self.recompute_depth:
            self.phase = Phase.BACKWARD
        self.pop_module()

    def fail_in(self, name: str) -> None:
        """The innermost module an exception left, for the error message."""
        if not self.failed_in:
            self.failed_in = name

    def note_input(self, name: str, args: Any) -> None:
        """The shape of a module's first input tensor, from its first forward."""
        if self.phase is Phase.FORWARD and name not in self.input_shapes:
            self.input_shapes[name] = first_shape(args)

    def note_output(self, name: str, out: Any) -> None:
        """The shape of a module's first output tensor, from its first forward."""
        if self.phase is Phase.FORWARD and name not in self.output_shapes:
            self.output_shapes[name] = first_shape(out)

    @contextmanager
    def allocating_as(self, category: Category | None) -> Iterator[None]:
        """New storages are `category` while the block runs (None: as the recorder finds them)."""
        previous = self._allocating
        self._allocating = category or previous
        try:
            yield
        finally:
            self._allocating = previous

    @contextmanager
    def at_node(self, name: str) -> Iterator[None]:
        """The fx node running: on every event while the block runs."""
        self.fx_node = name
        try:
            yield
        finally:
            self.fx_node = ""

    @contextmanager
    def active(self) -> Iterator[Recorder]:
        """This recorder is `active_recorder()` while the block runs."""
        _ACTIVE.append(self)
        try:
            yield self
        finally:
            _ACTIVE.remove(self)

    # --- storages -------------------------------------------------------------------------------
    def track(self, t: torch.Tensor, category: Category | None, op: str) -> int | None:
        """Register a tensor's storage if new; returns its id. New storages emit an alloc event. On the cuda
        target, tensors off meta (the optimizers' CPU step counters) are host memory: not counted."""
        if type(t) is not torch.Tensor:  # a plain tensor is its own local tensor, on meta or not
            t = local_tensor(t)
            if self.cuda and not simulated(t):
                return None
        elif self.cuda and not t.is_meta:
            return None
        storage = t.untyped_storage()
        if (self.managed and self._managed(storage)) or (self.host.live and self.host.holds(storage)):
            return None  # (both are empty in most steps: no call)
        found = self.live.get(storage._cdata)
        if found is not None and not _expired(found.ref.cdata):
            if category is not None:
                self.mark(found.sid, category)
            return found.sid
        nbytes = int(storage.nbytes())
        if allocating_managed():  # CUDA unified memory (bitsandbytes' paged state): apart, not an event
            self.managed[storage._cdata] = StorageWeakRef(storage)
            self.managed_bytes += nbytes
            return None
        if allocating_host():  # pinned host memory (an offloaded KV cache's copies): apart, its peak kept
            self.host.add(storage, nbytes)
            return None
        sid = next(self._ids)
        category = category or self._allocating
        self._watch(StorageWeakRef(storage), storage, sid)
        module, node = self._where()
        phase = self.phase
        meta = self.meta[sid] = _Meta(
            nbytes, op, module, tuple(t.shape), dtype_name(t.dtype), phase, self.iteration, category, node
        )
        if phase is Phase.BACKWARD:
            meta.grad_node = node_seq()
        if phase is Phase.SETUP and op == "":
            self.baseline.append(sid)
        else:  # `_emit`'s allocation, inline (one per new storage)
            self.events.append(
                Event(next(self._seq), Kind.ALLOC, sid, nbytes, phase, self.iteration, op, module, node)
            )
        return sid

    def _managed(self, storage: torch.UntypedStorage) -> bool:
        ref = self.managed.get(storage._cdata)
        if ref is None:
            return False
        if ref.expired():
            del self.managed[storage._cdata]
            return False
        return True

    def _where(self) -> tuple[str, str]:
        """The module and fx node of what runs now (`current_module`, `current_node`), the autograd node
        asked once."""
        if self.compiled_owner is not None:
            return self.compiled_owner, self.fx_node
        if self.phase is Phase.BACKWARD:
            node = torch._C._current_autograd_node()
            if node is not None:
                seq = node._sequence_nr()
                return self.node_module.get(seq, ""), self.autograd_fx.get(seq, "")
        return self.module_stack[-1], self.fx_node

    @contextmanager
    def recomputing(self, module: str) -> Iterator[None]:
        """A checkpointed forward run again inside backward: its own phase, attributed to its module."""
        phase, depth, stack = self.phase, self.recompute_depth, len(self.module_stack)
        self.phase, self.recompute_depth = Phase.RECOMPUTE, 0
        self.module_stack.append(module)
        try:
            yield
        finally:
            self.phase, self.recompute_depth = phase, depth
            del self.module_stack[stack:]

    def resized(self, storage: torch.UntypedStorage) -> None:
        """A storage resized in place (FSDP2 frees and re-allocates its unsharded parameters so): the old
        bytes are freed, and the new ones, if any, are a new allocation of the same category."""
        ref = StorageWeakRef(storage)
        found = self.live.pop(ref.cdata, None)
        category = self._allocating
        if found is not None:
            category = category or self.meta[found.sid].category
            self._emit(Kind.FREE, found.sid, self.meta[found.sid].nbytes, "resize_")
        nbytes = int(storage.nbytes())
        if nbytes > 0:
            sid = self._buffer(nbytes, "resize_")
            self._watch(ref, storage, sid)
            self.meta[sid].category = category

    def storage_id(self, t: torch.Tensor) -> int | None:
        """The id of the live storage behind a tensor, if the recorder knows it."""
        found = self.live.get(t.untyped_storage()._cdata)
        return found.sid if found is not None and not _expired(found.ref.cdata) else None

    def mark(self, sid: int, category: Category) -> None:
        meta = self.meta[sid]
        if meta.category is None or _PRECEDENCE[category] < _PRECEDENCE[meta.category]:
            meta.category = category

    def mark_tensor(self, t: torch.Tensor, category: Category, module: str | None = None) -> None:
        sid = self.track(t, category, op="")
        if sid is not None and module is not None:
            self.meta[sid].module = module

    def _watch(self, ref: StorageWeakRef, storage: torch.UntypedStorage, sid: int) -> None:
        """The storage is live under `sid`. A storage's Python object lives exactly as long as the storage
        (PyTorch preserves it while C++ holds the storage), so a weak reference's callback tells its death;
        sweeping then costs the storages that died, not all those alive (a 70B step keeps thousands)."""
        key: int = ref.cdata
        dead = self.dead

        def died(_: object) -> None:
            dead.append(key)

        self.live[key] = _Live(ref, sid, next(self._order), weakref.ref(storage, died))

    def sweep(self) -> None:
        """Emit frees for storages whose last reference went away since the last sweep, in the order they
        became live."""
        if not self.dead:
            return
        keys, self.dead[:] = set(self.dead), []
        found = [(live.order, k) for k in keys if (live := self.live.get(k)) and _expired(live.ref.cdata)]
        for _, key in sorted(found):
            live = self.live.pop(key)
            self._emit(Kind.FREE, live.sid, self.meta[live.sid].nbytes, "")

    def _buffer(self, nbytes: int, op: str) -> int:
        """A storage of `nbytes` no tensor output made: a kernel's buffer (or a storage resized)."""
        sid = next(self._ids)
        module, node, phase, it = self.current_module(), self.current_node(), self.phase, self.iteration
        self.meta[sid] = _Meta(nbytes, op, module, (nbytes,), "uint8", phase, it, Category.TEMPORARY, node)
        self._emit(Kind.ALLOC, sid, nbytes, op)
        return sid

    def _persist(self, name: str, nbytes: int, op: str) -> None:
        """A library workspace: allocated once per name, owned by no module, never freed."""
        if name in self.persistent or nbytes <= 0:
            return
        sid = self._buffer(nbytes, op)
        self.meta[sid].category, self.meta[sid].module, self.meta[sid].node = Category.WORKSPACE, "", ""
        self.persistent[name] = sid

    def _emit(self, kind: Kind, sid: int, nbytes: int, op: str, where: tuple[str, str] | None = None) -> None:
        """An event; `where`: the module and node of an allocation, when the caller has them."""
        meta = self.meta[sid]
        if kind is Kind.ALLOC:
            module, node = where or self._where()
        else:
            module, node = meta.module, meta.node
        self.events.append(
            Event(next(self._seq), kind, sid, nbytes, self.phase, self.iteration, op or meta.op, module, node)
        )

    def current_node(self) -> str:
        """The fx node running (set by the fx map's interpreter); in backward, the grad_fn's node."""
        if self.phase is Phase.BACKWARD:
            node = torch._C._current_autograd_node()
            if node is not None:
                return self.autograd_fx.get(node._sequence_nr(), "")
        return self.fx_node

    def claim_for_node(self, out: Any, name: str) -> None:
        """Called by the fx interpreter after a node ran: its new autograd nodes belong to it."""
        if self.phase is Phase.FORWARD and torch.is_grad_enabled():
            claim(self.autograd_fx, out, name)

    def inside_module(self) -> bool:
        """Whether a module's forward (or its recompute) is running: the root's counts too."""
        return len(self.module_stack) > 1

    def current_module(self) -> str:
        if self.phase is Phase.BACKWARD:
            node = torch._C._current_autograd_node()
            if node is not None:
                return self.node_module.get(node._sequence_nr(), "")
        return self.module_stack[-1]

    # --- a decode forward replayed (decode_replay.py): its events again, under new ids -------------
    def replayed(self, born: Sequence[Born], events: Sequence[Replayed]) -> list[int]:
        """A forward's storages born again (new ids, in their order) and its events emitted again, each
        (kind, storage's index in `born`, bytes, op, module, node): the ids, by index."""
        phase, iteration = self.phase, self.iteration
        sids = [next(self._ids) for _ in born]
        for sid, b in zip(sids, born, strict=True):
            self.meta[sid] = _Meta(
                b.nbytes, b.op, b.module, b.shape, b.dtype, phase, iteration, b.category, b.node
            )
        seq, append = self._seq, self.events.append
        for kind, i, nbytes, op, module, node in events:
            append(make_event(next(seq), kind, sids[i], nbytes, phase, iteration, op, module, node))
        return sids

    def adopt(self, storage: torch.UntypedStorage, sid: int) -> None:
        """A replayed storage that outlives the forward: its death is seen as any other's."""
        self._watch(StorageWeakRef(storage), storage, sid)

    # --- the op ---------------------------------------------------------------------------------
    def tracks_only(self, func: Any) -> bool:
        """Whether `on_op` does nothing for the op but track its outputs: no FLOPs, no device rule, not
        the backward's in-place sum of gradients."""
        _, _, counts, rule = self._facts(func)
        return not counts and rule is None and func is not torch.ops.aten.add.Tensor

    def holds(self, out: Any) -> bool:
        """Whether the tensor's storage is live and known (tracking it again records nothing)."""
        return type(out) is torch.Tensor and self.storage_id(out) is not None

    def _facts(self, func: Any) -> tuple[Any, str, bool, WorkspaceRule | None]:
        facts = self._ops.get(id(func))
        if facts is None:  # by id, once per op: an OpOverload hashes in Python
            facts = self._ops[id(func)] = (func, op_name(func), has_flops(func), self.device.rule(func))
        return facts

    def on_op(self, func: Any, args: Any, kwargs: Any, out: Any) -> None:
        _, name, counts, rule = self._facts(func)
        flops = count_flops(func, args, kwargs, out) if counts else 0
        if flops:
            key = (self.iteration, self.current_module())
            self.module_flops[key] = self.module_flops.get(key, 0) + flops
        if (
            func is _ADD
            and self.phase is Phase.BACKWARD
            and self._accumulates_in_place(func, args, kwargs, out)
        ):
            return
        work = rule(args, kwargs or {}, out) if rule is not None else None
        if work is None:
            self._track_outputs(out, name, None)
            return
        if work.estimate is not None:
            self.estimate = max(self.estimate or work.estimate, work.estimate, key=lambda e: e[1])
        if work.output_nbytes and work.output_nbytes > out.untyped_storage().nbytes():
            out.untyped_storage().resize_(work.output_nbytes)  # meta: the size only, nothing to copy
        buffers: dict[int, int] = {}
        placed = False
        for step in work.steps:
            if step.kind == "alloc":
                buffers[step.key] = self._buffer(step.nbytes, name)
            elif step.kind == "free" and step.key in buffers:
                sid = buffers.pop(step.key)
                self._emit(Kind.FREE, sid, self.meta[sid].nbytes, name)
            elif step.kind == "persist":
                self._persist(step.name, step.nbytes, f"{name} ({step.name.split(':')[0]} workspace)")
            elif step.kind == "output":
                placed = True
                self._track_outputs(out, name, None if step.key < 0 else step.key)
        if not placed:
            self._track_outputs(out, name, None)
        for sid in buffers.values():
            self._emit(Kind.FREE, sid, self.meta[sid].nbytes, name)
        self._track_outputs(out, name, None)

    def _accumulates_in_place(self, func: Any, args: Any, kwargs: Any, out: Any) -> bool:
        """Autograd's InputBuffer sums two gradients of one input in place when the buffer alone holds one of
        them; under any Python dispatch mode it adds out of place (`isTensorSubclassLike`). Recognise that sum
        (an earlier node's gradient plus the running node's) and record it as the real engine runs it: the
        result takes over the storage of the operand it would have been written to."""
        if func is not torch.ops.aten.add.Tensor or kwargs or len(args) != 2:
            return False
        old, new = args
        if not all(
            isinstance(t, torch.Tensor) and t.shape == out.shape and t.dtype == out.dtype for t in args
        ):
            return False
        old_sid, new_sid = self.storage_id(old), self.storage_id(new)
        if old_sid is None or new_sid is None or self.storage_id(out) is not None:
            return False
        node = node_seq()
        old_meta, new_meta = self.meta[old_sid], self.meta[new_sid]
        if (
            new_meta.grad_node != node
            or old_meta.grad_node in (-1, node)
            or old_meta.iteration != self.iteration
        ):
            return False
        target = old if sole_owner(old) else new if sole_owner(new) else None
        if target is None:
            return False
        cdata = StorageWeakRef(target.untyped_storage()).cdata
        reused = self.live.pop(cdata)
        storage = out.untyped_storage()
        self._watch(StorageWeakRef(storage), storage, reused.sid)
        return True

    def _track_outputs(self, out: Any, name: str, index: int | None) -> None:
        """Track the op's outputs (all, or output `index` of a tuple); known storages stay as they are."""
        chosen = out if index is None else (out[index] if isinstance(out, (tuple, list)) else out)
        if isinstance(chosen, torch.Tensor):
            self.track(chosen, None, name)
            return
        kind = type(chosen)
        if (kind is tuple or kind is list) and all(type(t) is torch.Tensor or t is None for t in chosen):
            for t in chosen:  # an op's usual tuple of outputs: its leaves without pytree's walk
                if t is not None:
                    self.track(t, None, name)
            return
        for t in tree_leaves(chosen):
            if isinstance(t, torch.Tensor):
                self.track(t, None, name)

    # --- program observer and phases -------------------------------------------------------------
    def start(self, iteration: int) -> None:
        """A new step starts: what the previous one left behind is settled first."""
        self.sweep()
        self.phase, self.iteration = Phase.SETUP, iteration
        self.module_stack = [""]
        self.failed_in = ""
        for p in self.params:  # a parameter whose storage was replaced (FSDP2 re-pads uneven shards)
            sid = self.storage_id(local_tensor(p))
            if sid is not None:
                self.mark(sid, Category.PARAMETER)

    def enter(self, phase: Phase) -> None:
        """The step moves to `phase` (said by the default step, or found by a hook)."""
        if phase is not self.phase and self.phase is not Phase.RECOMPUTE:
            self.sweep()
            self.phase = phase

    def targets(self, batch: Batch) -> None:
        """Targets a built-in loss made belong to the batch, as a data loader's labels do."""
        for t in batch.made.values():
            self.mark_tensor(t, Category.INPUT)

    def settle(self) -> None:
        self.sweep()

    def outputs(self, out: Any) -> None:
        for t in floating_leaves(out):
            self.mark_tensor(t, Category.OUTPUT)

    def gradients(self) -> None:
        for p in self.params:
            if p.grad is not None:
                self.mark_tensor(p.grad, Category.GRADIENT, self.owners.get(id(p), ""))

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        for param, state in optimizer.state.items():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    self.mark_tensor(v, Category.OPTIMIZER_STATE, self.owners.get(id(param), ""))

    # --- results --------------------------------------------------------------------------------
    def trace(self, iterations: int) -> Trace:
        self.sweep()
        storages = {
            sid: make_storage_info(
                sid,
                m.nbytes,
                m.category or Category.TEMPORARY,
                m.op,
                m.module,
                m.shape,
                m.dtype,
                m.phase,
                m.iteration,
                m.node,
            )
            for sid, m in self.meta.items()
        }
        last = iterations - 1
        module_flops = {m: f for (it, m), f in self.module_flops.items() if it == last}
        return Trace(
            tuple(self.events),
            storages,
            tuple(self.baseline),
            iterations,
            sum(module_flops.values()),
            module_flops,
            dict(self.output_shapes),
            dict(self.input_shapes),
            workspace_estimate=self.estimate,
            managed_bytes=self.managed_bytes,
            host_peak_bytes=self.host.peak_bytes,
        )


_ACTIVE: list[Recorder] = []


def active_recorder() -> Recorder | None:
    """The recorder of the simulation in progress, if any."""
    return _ACTIVE[-1] if _ACTIVE else None
