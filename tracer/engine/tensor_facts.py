"""What the recorder reads off a tensor or the autograd graph: a dtype's name, a DTensor's local shard, the
first tensor's shape, the current autograd node, a storage's sole owner, and the claim of autograd nodes by
a module or fx node. Torch-touching, stateless."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._pytree import tree_leaves


@functools.cache
def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2's parameters, gradients and optimizer state); any other tensor as is."""
    inner = getattr(t, "_local_tensor", None)
    return inner if isinstance(inner, torch.Tensor) else t


def first_shape(value: Any) -> tuple[int, ...]:
    first = next((t for t in tree_leaves(value) if isinstance(t, torch.Tensor)), None)
    return tuple(first.shape) if first is not None else ()


def node_seq() -> int:
    node = torch._C._current_autograd_node()
    return int(node._sequence_nr()) if node is not None else -1


def sole_owner(t: torch.Tensor) -> bool:
    """Whether only one owner holds the tensor's storage (the probe's own handle not counted)."""
    storage = t.untyped_storage()
    return t.is_contiguous() and torch._C._storage_Use_Count(storage._cdata) == 2


def claim(table: dict[int, str], out: Any, name: str) -> None:
    """Give the autograd nodes behind `out` that nothing claimed yet (inner module, earlier node) to name."""
    stack = [t.grad_fn for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    while stack:
        node = stack.pop()
        key = node._sequence_nr()
        if key in table or type(node).__name__ == "AccumulateGrad":
            continue
        table[key] = name
        stack.extend(n for n, _ in node.next_functions if n is not None)


def plain_tensors(t: torch.Tensor) -> Iterator[torch.Tensor]:
    """The tensors holding `t`'s storage: `t`, or a wrapper subclass's inner tensors (torchao's quantized
    weights, through `__tensor_flatten__`), which own the storages the wrapper has none of."""
    flatten = getattr(t, "__tensor_flatten__", None)
    if flatten is None or isinstance(getattr(t, "_local_tensor", None), torch.Tensor):
        yield t  # a plain tensor, or a DTensor (its local shard: `local_tensor`)
        return
    names, _ = flatten()
    for name in names:
        inner = getattr(t, name)
        if isinstance(inner, torch.Tensor):
            yield from plain_tensors(inner)
