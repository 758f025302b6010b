"""cuDNN convolution workspace: an estimate shown beside the peak, never placed in it.

With `torch.backends.cudnn.benchmark` off (the default), `run_single_conv` in
`aten/src/ATen/native/cudnn/Conv_v8.cpp` asks cuDNN's heuristics for engine configs
(`get_configs_from_heuristics`, CUDNN_HEUR_MODE_INSTANT, then the fallback list) and `try_configs` runs the
first one that builds: `run_conv_plan` allocates `plan.getWorkspaceSize()` bytes through the caching
allocator and frees them when the call returns; an out-of-memory error moves on to the next config. The
plan is cached per shape (`benchmark_cache`), so every later call with that shape takes the same workspace.
Which engine cuDNN ranks first depends on the GPU, the cuDNN version and the shapes: no rule in PyTorch
decides it, so the workspace cannot be simulated, only bracketed:

- low: 0 bytes. cuDNN's implicit-GEMM engines need no workspace, and it is what many calls get.
- high: three times the call's input, weight and output together (in the input's dtype). Measured, not
  from the source: on an H200 with cuDNN 9.19 (benchmarks/results/h200-torch2.11) the seed CNN's fp32
  convolutions took workspaces of 1.0x to 2.7x their input + weight + output (a weight gradient of a 3x3
  conv on 8x128x18x32: 14,155,776 B against 5,308,416 B of operands), up to 6x the largest operand, so the
  earlier bound of one operand's size was exceeded.

`convolution_backward` runs up to two cuDNN calls (data, then filter), each freeing its workspace before
the next, so its estimate is the larger of the two. One workspace is live at a time: the step's estimate
is the largest call's.
"""

from __future__ import annotations

from math import prod
from typing import Any

import torch

from ...core.registry import Workspace, rule

aten = torch.ops.aten


def conv_workspace_estimate(
    input_shape: tuple[int, ...], weight_shape: tuple[int, ...], output_shape: tuple[int, ...], itemsize: int
) -> tuple[int, int]:
    """(low, high) workspace bytes of one cuDNN convolution call (forward, backward data or backward
    filter: they touch the same three tensors)."""
    return 0, HIGH_FACTOR * (prod(input_shape) + prod(weight_shape) + prod(output_shape)) * itemsize


HIGH_FACTOR = 3  # the measured 2.7x, rounded up


def estimate_json(estimate: tuple[int, int] | None) -> dict[str, int] | None:
    """The JSON form under `cuda`: {low_bytes, high_bytes}."""
    return None if estimate is None else {"low_bytes": estimate[0], "high_bytes": estimate[1]}


def _estimated(x: Any, w: Any, y: Any) -> Workspace:
    estimate = conv_workspace_estimate(tuple(x.shape), tuple(w.shape), tuple(y.shape), x.element_size())
    return Workspace(estimate=estimate)


@rule("cuda", aten.convolution.default)
def convolution(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    return _estimated(args[0], args[1], out)


@rule("cuda", aten.convolution_backward.default)
def convolution_backward(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    grad_output, x, w = args[0], args[1], args[2]
    return _estimated(x, w, grad_output)
