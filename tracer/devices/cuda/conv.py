"""cuDNN convolution workspace: measured where the GPU and shape were measured, else an estimate.

Where the table of measured workspaces (`cudnn_table.py`, `cudnn_workspaces.json`) has the target GPU's
architecture and cuDNN version (`--gpu` preset, `--cudnn-version`) and the call's shape, the workspace is
placed in the step: allocated after the call's output and freed when it returns, through the caching
allocator's replay, so reserved follows it. Any other call on a measured family of shapes gets a range from
the nearest measured calls (stated, not placed). Without any measurement, the bracket below holds.

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
from . import cudnn_table
from .attention import current as current_target
from .cudnn_table import ConvKey, Found, Table

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


_LOADED: list[list[Table]] = []


def tables() -> list[Table]:
    """The measured tables shipped with memtrace (loaded once)."""
    if not _LOADED:
        _LOADED.append(cudnn_table.load())
    return _LOADED[0]


def _pair(v: Any, spatial: int) -> tuple[int, int]:
    vals = [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]
    if len(vals) == 1:
        return (1 if spatial == 1 else vals[0], vals[0])
    return vals[-2], vals[-1]


def _key(pass_: str, x: Any, w: Any, stride: Any, padding: Any, dilation: Any, groups: Any) -> ConvKey | None:
    """The table's key of one call; None for what it does not hold (3-d convolutions)."""
    if x.dim() not in (3, 4):
        return None
    spatial = x.dim() - 2
    h, wd = (1, int(x.shape[-1])) if spatial == 1 else (int(x.shape[-2]), int(x.shape[-1]))
    kh, kw = (1, int(w.shape[-1])) if spatial == 1 else (int(w.shape[-2]), int(w.shape[-1]))
    nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    dtype, layout = str(x.dtype).removeprefix("torch."), "nhwc" if nhwc else "nchw"
    s, p, d = _pair(stride, spatial), _pair(padding, spatial), _pair(dilation, spatial)
    n, c, o = int(x.shape[0]), int(x.shape[1]), int(w.shape[0])
    return ConvKey(pass_, dtype, layout, n, c, h, wd, o, kh, kw, s, p, d, int(groups))


def _found(key: ConvKey | None) -> Found | None:
    if key is None:
        return None
    gpu = current_target().gpu
    return cudnn_table.lookup(tables(), gpu.compute_capability, gpu.cudnn_version, key)


def _ranges() -> list[tuple[int, int]]:
    return []


def _measured(ws: Workspace, found: Found | None, unplaced: list[tuple[int, int]]) -> None:
    """Place an exact workspace (allocated, then freed as the call returns); keep a range aside."""
    if found is not None and found.exact:
        ws.free(ws.alloc(found.low))
    elif found is not None:
        unplaced.append((found.low, found.high))


@rule("cuda", aten.convolution.default)
def convolution(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    x, w, stride, padding, dilation, transposed, groups = (args[i] for i in (0, 1, 3, 4, 5, 6, 8))
    found = None if transposed else _found(_key("fwd", x, w, stride, padding, dilation, groups))
    if found is None:
        return _estimated(x, w, out)
    ws, unplaced = Workspace(), _ranges()
    ws.outputs()
    _measured(ws, found, unplaced)
    ws.estimate = unplaced[0] if unplaced else None
    return ws


@rule("cuda", aten.convolution_backward.default)
def convolution_backward(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    grad_output, x, w = args[0], args[1], args[2]
    stride, padding, dilation, transposed, groups, mask = (args[i] for i in (4, 5, 6, 7, 9, 10))
    passes = [p for p, m in (("bwd_data", mask[0]), ("bwd_filter", mask[1])) if m]
    found = [] if transposed else [_found(_key(p, x, w, stride, padding, dilation, groups)) for p in passes]
    if not found or any(f is None for f in found):
        return _estimated(x, w, grad_output)
    ws, unplaced = Workspace(), _ranges()
    for index, f in zip((0, 1) if mask[0] else (1,), found, strict=False):
        ws.output(index)  # cudnn_convolution_backward_input, then _weight: each output, then its call
        _measured(ws, f, unplaced)
    ws.outputs()
    ws.estimate = max(unplaced, key=lambda e: e[1]) if unplaced else None
    return ws
