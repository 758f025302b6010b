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
- high: the largest of the call's input, weight and output (in the input's dtype). An assumption, not a
  figure from the source: the engines that need a workspace (Winograd and FFT tiling stage transformed
  tiles of one operand, split-K weight gradients stage partial sums) stay near one operand's size for the
  heuristic's first choices. To be measured on a GPU (benchmarks/results/cuda-facts.md).

`convolution_backward` runs up to two cuDNN calls (data, then filter), each freeing its workspace before
the next, so its estimate is the larger of the two. One workspace is live at a time: the step's estimate
is the largest call's.
"""

from __future__ import annotations

from math import prod
from typing import Any

from memtrace.tracer.devices import Workspace, rule


def conv_workspace_estimate(
    input_shape: tuple[int, ...], weight_shape: tuple[int, ...], output_shape: tuple[int, ...], itemsize: int
) -> tuple[int, int]:
    """(low, high) workspace bytes of one cuDNN convolution call (forward, backward data or backward
    filter: they touch the same three tensors)."""
    return 0, max(prod(input_shape), prod(weight_shape), prod(output_shape)) * itemsize


def estimate_json(estimate: tuple[int, int] | None) -> dict[str, int] | None:
    """The JSON form under `cuda`: {low_bytes, high_bytes}."""
    return None if estimate is None else {"low_bytes": estimate[0], "high_bytes": estimate[1]}


def _estimated(x: Any, w: Any, y: Any) -> Workspace:
    estimate = conv_workspace_estimate(tuple(x.shape), tuple(w.shape), tuple(y.shape), x.element_size())
    return Workspace(estimate=estimate)


@rule("cuda", "aten.convolution.default")
def convolution(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    return _estimated(args[0], args[1], out)


@rule("cuda", "aten.convolution_backward.default")
def convolution_backward(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    grad_output, x, w = args[0], args[1], args[2]
    return _estimated(x, w, grad_output)
