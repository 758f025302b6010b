"""Data-dependent ops on meta, resolved by the assumption policy (tracer/core/assume.py).

The recorder's dispatch mode hands each op to the resolver (one mode, one Python dispatch per op), which keeps
*known values* beside some meta tensors and computes with them on
small CPU tensors: what the step made on the CPU and moved to meta (a data loader's targets, `torch.tensor`
of Python numbers), constant fills, `randperm` (a permutation of its own generator), the experts a top-k
routing picks (`moe.routing`, `moe.tokens`), the first k indices of any other top-k over unknown scores,
and whatever is computed from known values alone (one_hot, compares, sorts, `nonzero`, `where`, boolean-mask
indexing, `.item()`, `torchvision::nms`). An op whose inputs all have known values gets its exact shape and
value, so a MoE layer's loop over the experts it hit, or a detector's anchor matching against its targets,
runs as the real one does. An op with unknown inputs runs on meta; where meta has no answer (`nonzero`,
`masked_select`, `torchvision::nms`, `.item()`/`bool()`) the policy chooses (`nonzero`, `nms.keep`, `item`,
`check`), and where no key bounds it, a one-line error names the op, the module and the keys.

The counted ops (`nonzero` and each boolean mask of an index, `torchvision::nms`, `.item()`) are numbered per
step, so that the values `memtrace verify` measured on a real run (`Observer`) replay call by call. The
elements an unknown selection keeps are taken in turn over as many elements (positives, then negatives, as a
sampler's complementary masks are). Counts fix how many elements are kept, not which: where a later step
groups the kept elements by known values (torchvision's per-level NMS), the groups can differ from the real
run's when a filter dropped some.

`aten._grouped_mm` is also taken here: PyTorch's meta kernel follows the CUDA fast path (bf16 only), while
the kernel accepts fp32 and fp16 on the CPU: those get the same output shape (on a CUDA target unchecked).
Every choice made is recorded as an `Assumption`. Known limits: values are kept for floating tensors of at
most 4M elements and integer/boolean ones of at most 16M, and floating constant fills only for scalars;
`.tolist()` reads memory directly and is not seen; a write with unknown inputs forgets the
storage's known values.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from ..core.assume import (
    KEYS,
    Policy,
    assignment,
    check_counts,
    expert_counts,
    item_value,
    kept_boxes,
    kept_elements,
    token_groups,
)
from ..core.errors import DataDependentError, MemtraceError
from ..core.records import LOGGED, Assumption
from ..meta.tensors import simulated
from ..meta.user_frame import user_frame
from .arguments import (
    all_real,
    all_unknown,
    meta_in,
    meta_like,
    on_cpu,
    tensor_args,
    written,
)
from .known_values import MAX_KNOWN, MAX_KNOWN_INDEX, KnownValues, keepable, lifted
from .loops import Loops, read_site
from .meta_cache import MetaCache

aten = torch.ops.aten
_MAX_LOGGED = 4096  # elements: a logged value (a loss, a few metrics); larger reads are not for logging
_SIZE_FROM_DATA = {"nonzero", "masked_select", "_local_scalar_dense", "unique", "_unique", "_unique2"}
_SIZE_FROM_DATA |= {"unique_consecutive", "unique_dim", "repeat_interleave", "bincount", "nonzero_numpy"}
_SIZE_FROM_DATA |= {"nms"}  # torchvision::nms
_FILLS = {"zeros", "ones", "full", "arange", "scalar_tensor", "zeros_like", "ones_like", "full_like"}
_MAX_EXPERTS, _MAX_K = 1024, 64  # a top-k of at most k of these over the last dim routes
_META = torch.device("meta")
_CPU = torch.device("cpu")


def counted(func: Any) -> str | None:
    """The counted op `func` is (`nonzero`, `nms`, `_local_scalar_dense`), else None: the simulation numbers
    these calls and a real run's `Observer` records them, alike."""
    name = func.overloadpacket.__name__
    if func.namespace == "torchvision":
        return "nms" if name == "nms" else None
    return name if func.namespace == "aten" and name in ("nonzero", "_local_scalar_dense") else None


def _optimizer_frame() -> str | None:
    """`the optimizer step (torch/optim/_adafactor.py:381)` when a torch optimizer reads the value (Adafactor
    scales its update by a norm's `.item()`: a scalar, no allocation), else None."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename.replace(os.sep, "/")
        if "/torch/optim/" in name:
            return f"the optimizer step (torch/optim/{name.rsplit('/torch/optim/', 1)[1]}:{frame.f_lineno})"
        frame = frame.f_back
    return None


class CallCounter:
    """The calls of each counted op (`nonzero`, `torchvision::nms`) in the current step, from 0: measured
    counts name a step's calls in order, on any device, whatever memtrace knows of their inputs."""

    COUNTED = ("nonzero", "nms", "_local_scalar_dense")

    def __init__(self, iteration: Callable[[], int]) -> None:
        self.iteration, self.step, self.seen = iteration, -1, dict.fromkeys(self.COUNTED, 0)
        self.cursor: dict[int, int] = {}  # elements -> where the next unknown selection over as many starts

    def next(self, func: Any) -> int | None:
        name = counted(func)
        return None if name is None else self.take(name)

    def take(self, name: str) -> int:
        if self.iteration() != self.step:
            self.step, self.seen, self.cursor = self.iteration(), dict.fromkeys(self.COUNTED, 0), {}
        self.seen[name] += 1
        return self.seen[name] - 1


class Resolver:
    """Runs an op for the recorder's dispatch mode: on known values, by the policy, or as it is."""

    def __init__(
        self,
        policy: Policy,
        where: Callable[[], str],
        iteration: Callable[[], int],
        in_model: Callable[[], bool] = lambda: True,
    ) -> None:
        self.policy, self.where, self.values = policy, where, KnownValues()
        self.in_model = in_model
        self.used: dict[Assumption, None] = {}
        self.routers: list[str] = []  # modules in the order they first routed
        self.generator = torch.Generator().manual_seed(0)
        self.calls = CallCounter(iteration)
        self.loops = Loops(policy, iteration)
        # the meta half of an op on known values: its outputs' metadata follow from the inputs' alone
        self.meta = MetaCache(lambda func: True, lambda storage: False)
        self.reads = 0  # values read into sizes or Python (counted ops, masks, sized ops, the policy's)
        self._plain_ops: dict[int, tuple[Any, bool]] = {}

    def runs_as_is(self, func: Any, args: Any, kwargs: dict[str, Any]) -> bool:
        """Whether `dispatch` runs the op as it is: a plain op (none that `dispatch` treats apart by its
        inputs' device or dtype) none of whose inputs has a known value. By id."""
        found = self._plain_ops.get(id(func))
        if found is None:
            simple = _plain(func) and func not in (aten._grouped_mm.default, aten._to_copy.default)
            found = self._plain_ops[id(func)] = (func, simple)
        if not found[1]:
            return False
        if all_unknown(args, self.values) and all_unknown(kwargs.values(), self.values):
            return True
        # real tensors alone (an optimizer's CPU step counter): their values are their own, nothing to resolve
        return all_real(args) and all_real(kwargs.values())

    @staticmethod
    def passes_through(func: Any) -> bool:
        """Whether the op, given no known value among its inputs, is run as it is: no call counted, no value
        kept (the op cache replays only those)."""
        return _plain(func)

    def dispatch(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        if self.runs_as_is(func, args, kwargs):
            return func(*args, **kwargs)  # what the steps below come to for such an op (most of a step's)
        name = func.overloadpacket.__name__
        call = self.calls.next(func)
        if call is not None:
            self.reads += 1
        if func is aten._grouped_mm.default and args[0].device == _META and args[0].dtype != torch.bfloat16:
            return _grouped_mm_shape(*args, **kwargs)
        if func in INDEXED:  # a real run's observer counts each boolean mask of an index as a nonzero
            calls = [self.calls.take("nonzero") for i in args[1] if is_bool_index(i)]
            if any(_is_mask(i) for i in args[1]):
                args = (args[0], self._mask_indices(args[1], iter(calls)), *args[2:])
        tensors = tensor_args(kwargs.values(), tensor_args(args, []))
        # seldom: flattened then (not for CPU values alone, an optimizer's step counter: pytree is slow)
        on_meta = any(t.device == _META for t in tensors) or meta_in((*args, *kwargs.values()))
        if tensors and on_meta and all(self._known(t) is not None for t in tensors):
            flat, spec = tree_flatten((args, kwargs))
            known = [self._known(t) for t in flat if isinstance(t, torch.Tensor)]
            return self._on_values(func, name, flat, spec, iter(known))
        if func in _ABSORBING and tensors:
            return self._absorbed(func, args, kwargs)
        if name in _FILLS:
            return self._filled(func, name, args, kwargs)
        if name == "randperm":
            return self._randperm(func, args, kwargs)
        if func in (aten.fill_.Scalar, aten.zero_.default) and args[0].device == _META:
            return self._filled_in_place(func, args)
        for t in written(func, args, kwargs):
            self.values.forget(t)
        if func.namespace == "torchvision" and name == "nms" and args[0].device == _META:
            return self._nms(args[0], call)
        if name in _SIZE_FROM_DATA and args and getattr(args[0], "device", None) == _META:
            return self._assume(name, args, call)
        if func is aten._to_copy.default and _read_out(args[0], kwargs):
            return self._copied_out(func, args, kwargs)
        out = func(*args, **kwargs)
        if name == "topk" and args[0].device.type == "meta":
            self._topk(args, kwargs, out)
        return out

    def _known(self, t: torch.Tensor) -> torch.Tensor | None:
        """A meta tensor's known value; a small CPU tensor (a data loader's targets, a Python list made a
        tensor) is its own value; a FakeTensor (DDP and FSDP2 run under FakeTensorMode) has none."""
        if t.device.type == "cpu" and not simulated(t):
            return t if keepable(t) else None
        return self.values.get(t)

    def _absorbed(self, func: Any, args: Any, kwargs: Any) -> Any:
        """`a & b` with one side known all False is all False, `a | b` with one side known all True all True
        (whatever the other holds): a loop's stop condition known from its bound alone (beam search's
        `improvement & open & valid` once `valid` is False at max_length)."""
        out = func(*args, **kwargs)
        absorbing = _ABSORBING[func]
        for x in args[:2]:
            value = self._known(x) if isinstance(x, torch.Tensor) else None
            if value is not None and value.dtype == torch.bool and bool((value == absorbing).all()):
                if isinstance(out, torch.Tensor) and out.dtype == torch.bool and out.device == _META:
                    self.values.put(out, torch.full(out.shape, absorbing, dtype=torch.bool))
                break
        return out

    def _randperm(self, func: Any, args: Any, kwargs: Any) -> Any:
        """`randperm` on meta: a permutation, known (drawn from a generator of its own, so the user's random
        stream is untouched). Which elements a sampler picks depends on it, how many do not."""
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.device == _META and out.numel() <= MAX_KNOWN:
            self.values.put(out, torch.randperm(out.numel(), generator=self.generator).to(out.dtype))
        return out

    def _on_values(self, func: Any, name: str, flat: list[Any], spec: Any, known: Iterator[Any]) -> Any:
        cpu = [next(known) if isinstance(x, torch.Tensor) else on_cpu(x) for x in flat]
        cpu_args, cpu_kwargs = tree_unflatten(cpu, spec)
        try:
            value = func(*cpu_args, **cpu_kwargs)
        except (NotImplementedError, RuntimeError):  # no CPU kernel for these dtypes (histc of int)
            if name in _SIZE_FROM_DATA:
                raise
            meta_args, meta_kwargs = tree_unflatten(flat, spec)
            for t in written(func, meta_args, meta_kwargs):
                self.values.forget(t)
            return func(*meta_args, **meta_kwargs)
        if name == "_local_scalar_dense":
            return value
        meta_args, meta_kwargs = tree_unflatten(flat, spec)
        sized = name in _SIZE_FROM_DATA  # meta has no size for these: the value's
        if sized:
            self.reads += 1
            out = tree_map(meta_like, value)
        else:
            out = self.meta.run(func, meta_args, meta_kwargs, lambda: func(*meta_args, **meta_kwargs))
        # A write through a view of a known storage: the CPU values are views of one another as the meta
        # tensors are (each computed by the same view ops), so the write reached every known view already.
        outs, _ = tree_flatten(out)
        for m, v in zip(outs, tree_flatten(value)[0], strict=False):
            if isinstance(m, torch.Tensor) and isinstance(v, torch.Tensor):
                self.values.put(m, v)
        for t, v in zip(flat, cpu, strict=True):  # in-place results: the written tensor keeps its value
            if isinstance(t, torch.Tensor) and any(t is w for w in written(func, meta_args, meta_kwargs)):
                self.values.wrote(t)
                self.values.put(t, v)
        return out

    def _filled(self, func: Any, name: str, args: Any, kwargs: Any) -> Any:
        """A constant fill (zeros, full, arange, zeros_like) on meta: its value is known."""
        out = self.meta.run(func, args, kwargs, lambda: func(*args, **kwargs))  # an AdamW state's zeros_like
        small = isinstance(out, torch.Tensor) and out.device == _META and out.numel() <= MAX_KNOWN
        if small and (not out.is_floating_point() or out.numel() == 1):  # indices, masks, scalars
            if name.endswith("_like"):
                args = (torch.empty(args[0].shape, dtype=args[0].dtype), *args[1:])
            self.values.put(out, func(*args, **{**kwargs, "device": torch.device("cpu")}))
        return out

    def _mask_indices(
        self, indices: list[torch.Tensor | None], calls: Iterator[int]
    ) -> list[torch.Tensor | None]:
        """Boolean masks among an index's indices, as the index tensors of their true elements: exact where
        the mask's values are known, else by the nonzero policy (meta has no size for a mask's count)."""
        found: list[torch.Tensor | None] = []
        self.reads += 1
        for index in indices:
            call = next(calls) if is_bool_index(index) else None
            if not _is_mask(index):
                found.append(index)
                continue
            assert index is not None
            value = self._known(index)
            if value is None:
                where = self._assume("nonzero", (index,), call)
                value = self.values.get(where)
                if value is None:
                    found.extend(where.unbind(1))
                    continue
            else:
                value = value.nonzero()
            for column in value.unbind(1):
                meta = torch.empty(column.shape, dtype=torch.int64, device=_META)
                self.values.put(meta, column.contiguous())
                found.append(meta)
        return found

    def _filled_in_place(self, func: Any, args: Any) -> Any:
        """`empty(...).fill_(v)`, `zero_()`: the whole tensor's value is known (when it is not a view)."""
        x = args[0]
        out = func(*args)
        self.values.forget(x)
        self.values.wrote(x)
        whole = x.numel() * x.element_size() == x.untyped_storage().nbytes() and x.is_contiguous()
        if whole and x.numel() <= MAX_KNOWN and not x.is_floating_point():
            self.values.put(x, func(torch.empty(x.shape, dtype=x.dtype), *args[1:]))
        return out

    def _note(self, op: str, value: str, key: str) -> None:
        source = self.policy.value(key)[1]
        self.used.setdefault(Assumption(op, self.where(), value, source), None)

    def _logged(self, x: torch.Tensor, how: str) -> bool:
        """A floating-point value read by the step outside the model's forward (a loss printed or logged):
        its value changes no memory, so a placeholder stands for it, listed in the report."""
        if not x.is_floating_point() or x.numel() > _MAX_LOGGED or self.in_model():
            return False
        where = _optimizer_frame() or user_frame() or "the step"
        self.used.setdefault(Assumption(how, where, "0.0", LOGGED), None)
        return True

    def _copied_out(self, func: Any, args: Any, kwargs: Any) -> Any:
        """`.cpu()`, `.tolist()`, `.numpy()` of a meta tensor: zeros for a logged value, else one line."""
        x = args[0]
        if self._logged(x, ".cpu() / .tolist() (logged)"):
            return torch.zeros(x.shape, dtype=kwargs.get("dtype") or x.dtype)
        raise DataDependentError(
            f"the step reads the values of a {tuple(x.shape)} {str(x.dtype).removeprefix('torch.')} "
            f"tensor (.cpu(), .tolist() or .numpy()) at {user_frame() or 'an unknown line'}, "
            f"{self._in()}; meta tensors have no values: read floating-point values only for logging, "
            "outside the model's forward, or pass the values the step needs as its inputs"
        )

    def _in(self) -> str:
        return f"in module {self.where()!r}" if self.in_model() else "in the step, outside the model"

    def _assume(self, name: str, args: Any, call: int | None) -> Any:
        """A data-dependent op on a tensor with no known values: the policy's choice, or a one-line error."""
        x = args[0]
        self.reads += 1
        if name == "_local_scalar_dense" and self._logged(x, ".item() (logged)"):
            return 0.0
        if name == "nonzero":
            value = self.policy.value("nonzero")[0] if call is not None else "all"
            n = kept_elements(value, x.numel(), call or 0, self.calls.step)
            kept = f"all {n} elements kept" if value == "all" else f"{n} of {x.numel()} kept"
            self._note(name, kept, "nonzero")
            out = torch.empty((n, x.dim()), dtype=torch.long, device=x.device)
            if out.numel() <= MAX_KNOWN_INDEX:
                self.values.put(out, self._kept_in_turn(x, n))
            return out
        if name == "masked_select":
            n = torch.broadcast_shapes(x.shape, args[1].shape).numel()
            self._note(name, f"all {n} elements kept", "nonzero")
            return torch.empty((n,), dtype=x.dtype, device=x.device)
        if name == "_local_scalar_dense":
            return self._item(x, call)
        raise DataDependentError(_unbounded(name, x, self._in()))

    def _item(self, x: torch.Tensor, call: int | None) -> bool | int | float:
        """`.item()`/`bool()` of unknown values: `item` values where given, else a bool by the loop rule
        inside a loop (loops.py) or passing as a check; every read of a loop's exit counted and budgeted."""
        site = read_site()
        item, source = self.policy.value("item")
        if source == "--assume" and call is not None:
            if site is not None:
                self.loops.count(site)
            number = item_value(item, call, self.calls.step)
            found = number if x.is_floating_point() else int(number)
            found = bool(found) if x.dtype == torch.bool else found
            self._note("item", f"{found} (call {call})", "item")
            return found
        if x.dtype != torch.bool:
            raise DataDependentError(_unbounded("_local_scalar_dense", x, self._in()))
        if site is not None and site.value is not None:
            return self.loops.decide(site)
        if site is not None:
            self.loops.count(site)
            self._note(
                "item (bool)", "true: the check passes (in a loop whose exit the code does not show)", "check"
            )
            return True
        self._note("item (bool)", "true: the check passes", "check")
        return True

    def _kept_in_turn(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The indices of the n elements an unknown selection keeps: successive selections over as many
        elements in a step take theirs in turn (positives, then negatives, are complementary), ascending."""
        start = self.calls.cursor.get(x.numel(), 0)
        self.calls.cursor[x.numel()] = (start + n) % max(x.numel(), 1)
        flat = ((torch.arange(n) + start) % max(x.numel(), 1)).sort().values
        if x.dim() == 0:
            return torch.zeros((n, 0), dtype=torch.long)
        return torch.stack(torch.unravel_index(flat, x.shape), dim=1).reshape(n, x.dim())

    def _nms(self, boxes: torch.Tensor, call: int | None) -> torch.Tensor:
        """`torchvision::nms` over boxes with no known values: the count `nms.keep` gives. The kept indices
        are known (the first boxes), since only their number changes a size."""
        value, _ = self.policy.value("nms.keep")
        count = kept_boxes(value, boxes.shape[0], call or 0, self.calls.step)
        self._note("nms", f"{count} of {boxes.shape[0]} boxes kept", "nms.keep")
        out = torch.empty((count,), dtype=torch.int64, device=_META)
        self.values.put(out, torch.arange(count))
        return out

    def _topk(self, args: Any, kwargs: Any, out: Any) -> None:
        """A top-k over unknown scores: a MoE router's picks (k of at most `_MAX_EXPERTS` experts) by
        moe.tokens or moe.routing; any other's indices are the first k, known: they only address known
        tensors (a detector's anchor levels), where any k indices give the same sizes."""
        x, k = args[0], int(args[1])
        dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
        if x.dim() == 0 or k < 1:  # no indices: known (empty)
            self.values.put(out[1], torch.empty(out[1].shape, dtype=out[1].dtype))
            return
        last = dim in (-1, x.dim() - 1)
        if last and k < x.shape[-1] <= _MAX_EXPERTS and k <= _MAX_K:
            self._route(x, k, out)
        elif out[1].numel() <= MAX_KNOWN_INDEX:
            first = torch.arange(k).reshape([k if d == dim % x.dim() else 1 for d in range(x.dim())])
            self.values.put(out[1], first.expand(out[1].shape).contiguous())

    def _route(self, x: torch.Tensor, k: int, out: Any) -> None:
        """A top-k over unknown scores (a MoE router): its indices by moe.tokens or moe.routing."""
        experts, indices = x.shape[-1], out[1]
        tokens = indices.numel() // k
        module = self.where()
        if module not in self.routers:
            self.routers.append(module)
        given, source = self.policy.value("moe.tokens")
        if source == "--assume":
            groups = token_groups(given)
            counts = groups[min(self.routers.index(module), len(groups) - 1)]
            check_counts(counts, tokens, k, experts)
            self._note("topk", "tokens per expert " + ",".join(map(str, counts)), "moe.tokens")
        else:
            routing = self.policy.value("moe.routing")[0]
            counts = expert_counts(tokens, k, experts, routing)
            self._note("topk", f"{routing}: tokens per expert " + ",".join(map(str, counts)), "moe.routing")
        picks = torch.tensor(assignment(counts, tokens, k), dtype=indices.dtype).reshape(indices.shape)
        self.values.put(indices, picks)


_ABSORBING = {  # boolean ops whose result one side's value decides: the absorbing value
    aten.bitwise_and.Tensor: False,
    aten.logical_and.default: False,
    aten.bitwise_or.Tensor: True,
    aten.logical_or.default: True,
}


INDEXED = (aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default)


@functools.cache
def _plain(func: Any) -> bool:
    name = func.overloadpacket.__name__
    special = name in _FILLS or name in _SIZE_FROM_DATA or name in ("randperm", "topk")
    special = (
        special or func in INDEXED or func in (aten.fill_.Scalar, aten.zero_.default) or func in _ABSORBING
    )
    return not (special or counted(func) is not None or func.namespace != "aten")


def _unbounded(name: str, x: torch.Tensor, where: str) -> str:
    """The one line for a data-dependent value no --assume key bounds: the op, the user's line, the fix."""
    line = user_frame() or "an unknown line"
    if name == "_local_scalar_dense":
        kind = "a bool" if x.dtype == torch.bool else "an integer" if not x.is_floating_point() else "a value"
        return (
            f"{line}: .item() (or int(), float(), bool()) reads {kind} of a tensor {where}, "
            "which meta tensors do not have; give it with --assume item=V[,V...] in call order "
            "(`memtrace verify` measures them), or pass it to the step as a Python number"
        )
    return (
        f"{line}: aten::{name} {where} returns a size that depends on the data, and no "
        f"--assume key bounds it; choose one with --assume KEY=VALUE (keys: {', '.join(KEYS)}; "
        "`memtrace verify` measures them)"
    )


def _read_out(x: Any, kwargs: dict[str, Any]) -> bool:
    """A copy from a meta tensor to the CPU: it reads values that meta tensors do not have."""
    device = kwargs.get("device")
    return isinstance(x, torch.Tensor) and x.device == _META and device is not None and device.type == "cpu"


def is_bool_index(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype in (torch.bool, torch.uint8)


def _is_mask(x: Any) -> bool:
    return is_bool_index(x) and x.device == _META


def _grouped_mm_shape(
    a: torch.Tensor,
    b: torch.Tensor,
    offs: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`_grouped_mm` in fp32/fp16 as the CPU kernel runs it: the output shape of PyTorch's meta kernel."""
    if a.dtype != b.dtype or a.dtype not in (torch.float32, torch.float16):
        raise MemtraceError(f"aten::_grouped_mm: {a.dtype} x {b.dtype} is not a pair the kernel accepts")
    from torch._meta_registrations import _create_grouped_mm_output_tensor

    return _create_grouped_mm_output_tensor(a, b, offs, out_dtype)  # type: ignore[no-any-return]


@contextmanager
def resolving(
    policy: Policy,
    where: Callable[[], str],
    iteration: Callable[[], int] = lambda: 0,
    in_model: Callable[[], bool] = lambda: True,
) -> Iterator[list[Assumption]]:
    """The data-dependent ops of the step resolved by `policy` (run by the recorder's dispatch mode, entered
    inside); the list fills with the assumptions made.
    `iteration` tells the step being run (measured counts are per step); `in_model` whether a module's
    forward is running (a floating-point value read outside it is logged, and gets a placeholder)."""
    used: list[Assumption] = []
    mode = Resolver(policy, where, iteration, in_model)
    _ACTIVE.append(mode)
    try:
        with lifted(mode.values):
            yield used
    finally:
        _ACTIVE.remove(mode)
        used.extend(mode.used)
        used.extend(mode.loops.assumptions())


_ACTIVE: list[Resolver] = []


def active_resolver() -> Resolver | None:
    """The resolver of the simulation in progress: the recorder's dispatch mode, entered inside
    `resolving`, runs every op through it."""
    return _ACTIVE[-1] if _ACTIVE else None
