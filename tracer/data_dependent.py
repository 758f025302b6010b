"""Data-dependent ops on meta, resolved by the assumption policy (tracer/assume.py).

A dispatch mode below the recorder's keeps *known values* beside some meta tensors: the experts a top-k
routing picks (chosen by `moe.routing` or `moe.tokens`), and whatever is computed from known values alone
(one_hot, sums, compares, sorts, `nonzero`, `where`, `.item()`), computed on small CPU tensors. An op whose
inputs all have known values gets its exact shape and value, so a MoE layer's loop over the experts it hit
runs as the real one would. An op with unknown inputs runs on meta; where meta has no answer
(`nonzero`, `masked_select`, `.item()`/`bool()`) the policy chooses (`nonzero=all`, `check=pass`), and
where no key bounds it, a one-line error names the op, the module and the keys.

`aten._grouped_mm` is also taken here: PyTorch's meta kernel follows the CUDA fast path (bf16 only), while
the kernel accepts fp32 and fp16 on the CPU: those get the same output shape (on a CUDA target unchecked).
Every choice made is recorded as an `Assumption`. Known limits: values are kept for tensors of at most 1M
elements, and constant fills only of integer and boolean dtypes; `.tolist()` reads memory directly and is
not seen; a write through another view of a storage forgets the storage's known values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from memtrace.tracer.assume import KEYS, Policy, assignment, check_counts, expert_counts, token_groups
from memtrace.tracer.errors import MemtraceError
from memtrace.tracer.records import Assumption

aten = torch.ops.aten
_MAX_KNOWN = 1 << 20  # elements: larger results keep no known value
_SIZE_FROM_DATA = {"nonzero", "masked_select", "_local_scalar_dense", "unique", "_unique", "_unique2"}
_SIZE_FROM_DATA |= {"unique_consecutive", "unique_dim", "repeat_interleave", "bincount", "nonzero_numpy"}
_FILLS = {"zeros", "ones", "full", "arange", "scalar_tensor", "zeros_like", "ones_like", "full_like"}
_META = torch.device("meta")
_Key = tuple[int, tuple[int, ...], tuple[int, ...], torch.dtype]


class KnownValues:
    """Known values of meta tensors, by storage (views of one storage keep their own) and layout."""

    def __init__(self) -> None:
        self._by_storage: dict[int, tuple[StorageWeakRef, dict[_Key, torch.Tensor]]] = {}

    @staticmethod
    def _key(t: torch.Tensor) -> _Key:
        return (int(t.storage_offset()), tuple(t.shape), tuple(t.stride()), t.dtype)

    def get(self, t: torch.Tensor) -> torch.Tensor | None:
        entry = self._by_storage.get(t.untyped_storage()._cdata)
        if entry is None or entry[0].expired():
            return None
        return entry[1].get(self._key(t))

    def put(self, t: torch.Tensor, value: torch.Tensor) -> None:
        if value.numel() > _MAX_KNOWN or tuple(value.shape) != tuple(t.shape):
            return
        storage = t.untyped_storage()
        entry = self._by_storage.get(storage._cdata)
        if entry is None or entry[0].expired():
            entry = (StorageWeakRef(storage), {})
            self._by_storage[storage._cdata] = entry
        entry[1][self._key(t)] = value

    def forget(self, t: torch.Tensor) -> None:
        self._by_storage.pop(t.untyped_storage()._cdata, None)


class _Resolver(TorchDispatchMode):
    def __init__(self, policy: Policy, where: Callable[[], str]) -> None:
        super().__init__()
        self.policy, self.where, self.values = policy, where, KnownValues()
        self.used: dict[Assumption, None] = {}
        self.routers: list[str] = []  # modules in the order they first routed

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if func is aten._grouped_mm.default and args[0].device == _META and args[0].dtype != torch.bfloat16:
            return _grouped_mm_shape(*args, **kwargs)
        flat, spec = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        known = [self.values.get(t) for t in tensors]
        if tensors and all(v is not None for v in known) and all(t.device.type == "meta" for t in tensors):
            return self._on_values(func, name, flat, spec, iter(known))
        if name in _FILLS:
            return self._filled(func, name, args, kwargs)
        for t in _written(func, args, kwargs):
            self.values.forget(t)
        if name in _SIZE_FROM_DATA and args and getattr(args[0], "device", None) == _META:
            return self._assume(name, args)
        out = func(*args, **kwargs)
        if name == "topk" and args[0].device.type == "meta":
            self._route(args, kwargs, out)
        return out

    def _on_values(self, func: Any, name: str, flat: list[Any], spec: Any, known: Iterator[Any]) -> Any:
        cpu = [next(known) if isinstance(x, torch.Tensor) else x for x in flat]
        cpu_args, cpu_kwargs = tree_unflatten(cpu, spec)
        try:
            value = func(*cpu_args, **cpu_kwargs)
        except (NotImplementedError, RuntimeError):  # no CPU kernel for these dtypes (histc of int)
            if name in _SIZE_FROM_DATA:
                raise
            meta_args, meta_kwargs = tree_unflatten(flat, spec)
            for t in _written(func, meta_args, meta_kwargs):
                self.values.forget(t)
            return func(*meta_args, **meta_kwargs)
        if name == "_local_scalar_dense":
            return value
        meta_args, meta_kwargs = tree_unflatten(flat, spec)
        sized = name in _SIZE_FROM_DATA  # meta has no size for these: the value's
        out = tree_map(_meta_like, value) if sized else func(*meta_args, **meta_kwargs)
        for t in _written(func, meta_args, meta_kwargs):
            self.values.forget(t)
        outs, _ = tree_flatten(out)
        for m, v in zip(outs, tree_flatten(value)[0], strict=False):
            if isinstance(m, torch.Tensor) and isinstance(v, torch.Tensor):
                self.values.put(m, v)
        for t, v in zip(flat, cpu, strict=True):  # in-place results: the written tensor keeps its value
            if isinstance(t, torch.Tensor) and any(t is w for w in _written(func, meta_args, meta_kwargs)):
                self.values.put(t, v)
        return out

    def _filled(self, func: Any, name: str, args: Any, kwargs: Any) -> Any:
        """A constant fill (zeros, full, arange, zeros_like) on meta: its value is known."""
        out = func(*args, **kwargs)
        small = isinstance(out, torch.Tensor) and out.device == _META and out.numel() <= _MAX_KNOWN
        if small and not out.is_floating_point():  # indices, counts, masks: not activations
            if name.endswith("_like"):
                args = (torch.empty(args[0].shape, dtype=args[0].dtype), *args[1:])
            self.values.put(out, func(*args, **{**kwargs, "device": torch.device("cpu")}))
        return out

    def _note(self, op: str, value: str, key: str) -> None:
        source = self.policy.value(key)[1]
        self.used.setdefault(Assumption(op, self.where(), value, source), None)

    def _assume(self, name: str, args: Any) -> Any:
        """A data-dependent op on a tensor with no known values: the policy's choice, or a one-line error."""
        x = args[0]
        if name in ("nonzero", "masked_select") and self.policy.value("nonzero")[0] == "all":
            n = x.numel() if name == "nonzero" else torch.broadcast_shapes(x.shape, args[1].shape).numel()
            self._note(name, f"all {n} elements kept", "nonzero")
            shape = (n, x.dim()) if name == "nonzero" else (n,)
            return torch.empty(shape, dtype=torch.long if name == "nonzero" else x.dtype, device=x.device)
        if name == "_local_scalar_dense" and x.dtype == torch.bool:
            self._note("item (bool)", "true: the check passes", "check")
            return True
        op = f"aten::{name}" + (" (.item())" if name == "_local_scalar_dense" else "")
        raise MemtraceError(
            f"{op} in module {self.where()!r} returns a {'value' if 'scalar' in name else 'size'} "
            f"that depends on the data, and no --assume key bounds it (keys: {', '.join(KEYS)})"
        )

    def _route(self, args: Any, kwargs: Any, out: Any) -> None:
        """A top-k over unknown scores (a MoE router): its indices by moe.tokens or moe.routing."""
        x, k = args[0], int(args[1])
        dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
        if x.dim() == 0 or dim not in (-1, x.dim() - 1) or k < 1:
            return
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


def _meta_like(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device="meta")
    return v


def _written(func: Any, args: Any, kwargs: Any) -> list[torch.Tensor]:
    """The tensor arguments the op writes (in-place and out= ops)."""
    found = []
    for i, arg in enumerate(func._schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = args[i] if i < len(args) else kwargs.get(arg.name)
        if isinstance(value, torch.Tensor):
            found.append(value)
    return found


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
def resolving(policy: Policy, where: Callable[[], str]) -> Iterator[list[Assumption]]:
    """The data-dependent ops of the step resolved by `policy`; the list fills with the assumptions made."""
    used: list[Assumption] = []
    mode = _Resolver(policy, where)
    try:
        with mode:
            yield used
    finally:
        used.extend(mode.used)
