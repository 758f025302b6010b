"""gloo's collectives on the CPU: the buffers ProcessGroupGloo allocates inside an all-gather or a
reduce-scatter, which the simulated ranks' fake process group (engine/distributed.py) does not.

The CPU's process group is gloo, and its single-tensor collectives do not work in the caller's tensors
(seen in torch 2.13's CPU allocator events of a real 2-rank FSDP2 step, `torch.profiler` with
`profile_memory=True`, the op each allocation happened under):
- `all_gather_into_tensor` (`c10d::_allgather_base_`): a flat tensor the size of the output, allocated and
  freed by the calling thread inside the op, then one more on gloo's worker (`gloo:all_gather`, the flat
  output it gathers into before copying to the caller's), freed when the copy is done. For FSDP2 the output
  is a unit's whole all-gather buffer, so the step's peak can be there: on the 2-layer PEFT Llama of
  tests/test_fsdp_qlora.py the peak is layer 0's prefetched all-gather during layer 1's pre-backward, and
  the copy is 14.6% of it (fp32).
- `reduce_scatter_tensor` (`c10d::_reduce_scatter_base_`): the input cloned and all-reduced whole
  (`aten::clone` on the calling thread; the clone freed when the work is waited on); under `ReduceOp.AVG`
  (FSDP2's for fp32 and bf16 gradients) gloo's all-reduce divides by the world size in place, which makes
  the divisor an 8-byte scalar tensor and a copy of it in the gradients' dtype.
Each buffer is counted inside the op, in that order, as the runs measured (tests/test_distributed.py,
tests/test_fsdp_qlora.py: within 0.02%). Not modelled: a prefetched all-gather's worker copy lives while
gloo moves the data, so with a slow link it may overlap the caller's next ops.
"""

from __future__ import annotations

from typing import Any

import torch

from ...core.registry import Workspace, optional, rule

_AVG = 1  # c10d's RedOpType.AVG, as `ReduceOp.op()` gives it


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


@rule("cpu", optional("c10d::_allgather_base_.default"))
def allgather_base(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    output = args[0] if args else kwargs.get("output_tensor")
    nbytes = _nbytes(output)
    if not nbytes:
        return None
    ws = Workspace()
    ws.free(ws.alloc(nbytes))  # the calling thread's flat tensor
    ws.free(ws.alloc(nbytes))  # the worker's flat output
    return ws


@rule("cpu", optional("c10d::_reduce_scatter_base_.default"))
def reduce_scatter_base(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    source = args[1] if len(args) > 1 else kwargs.get("input_tensor")
    nbytes = _nbytes(source)
    if not nbytes:
        return None
    ws = Workspace()
    clone = ws.alloc(nbytes)
    if _reduce_op(args[3] if len(args) > 3 else kwargs.get("reduce_op")) == _AVG:
        scalar = ws.alloc(8)  # the world size as a wrapped number
        ws.free(ws.alloc(source.element_size()))  # converted to the gradients' dtype for div_
        ws.free(scalar)
    ws.free(clone)
    return ws


def _reduce_op(op: Any) -> int | None:
    """The `RedOpType` of the op's `ReduceOp` argument (a TorchScript object under the dispatcher)."""
    try:
        return int(op.op())
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return None
