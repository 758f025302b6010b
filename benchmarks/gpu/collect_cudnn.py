"""Measure the workspace cuDNN takes for each convolution call of common models, on this GPU, into the table
memtrace reads (tracer/devices/cuda/cudnn_workspaces.json, format in tracer/devices/cuda/cudnn_table.py).

python benchmarks/gpu/collect_cudnn.py [--out FILE] [--budget SECONDS] [--benchmark] [--batches 1,8,32]
                                       [--dtypes float32,bfloat16,float16] [--filter TEXT] [--list]

The calls: every Conv1d/Conv2d of the zoo's CNNs and U-Nets (tests/zoo.py), the repository's U-Nets and
seed CNN (benchmarks/models; the seed CNN at 144p, 360p, 720p and 1080p) and the torchvision models of the
suite, at batch 1, 8 and 32, in each dtype, channels-first and channels-last for the models that run so;
each as forward, backward data and backward filter (`aten.convolution` / `aten.convolution_backward` with
one output mask each). The shapes are found on the meta device (forward pre-hooks), so enumerating costs
nothing on the GPU.

Each call runs once to warm up (cuDNN's handle and its plan cache), then once measured: the caching
allocator's peak during the call minus what is allocated after it is the workspace (the call's outputs are
allocated before cuDNN's workspace and the workspace is freed before it returns; `run_conv_plan`,
aten/src/ATen/native/cudnn/Conv_v8.cpp), in the allocator's rounded bytes. `cudnn.benchmark` is off unless
--benchmark (a second table, marked so). Shapes are measured smallest first; the run stops at --budget
seconds and writes what it has; an out-of-memory call is skipped. The table for this GPU's compute
capability, cuDNN version and benchmark setting replaces the one of the same keys in --out.

--rnn measures cuDNN's RNN spaces instead (issue 24 item 2; the rule in tracer/devices/cuda/rnn.py states
them as a range until measured): for LSTM and GRU over layers, hidden size, batch, sequence length,
directions and dtype (`rnn_shapes`), one `torch._cudnn_rnn` call each in training and in inference, time-major
and contiguous so no copy is made. The reserve is the call's fourth output (uint8: its numel is the size
`cudnnGetRNNTempSpaceSizes` returned); the workspace is the allocator's peak during the call minus what is
allocated after it; the backward (autograd through `CudnnRnnBackward0`, every gradient given) gives its
peak minus what is allocated after it and minus the reserve it frees (`backward_scratch_bytes`: its larger
workspace, as RNN.cpp allocates nothing else there). Each entry also says whether the rule's stated range
held it (`RnnShape.reserve()`, `.workspace()`). Written to --rnn-out, one table per compute capability and
cuDNN version.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks" / "models"))

from memtrace.tracer.devices.cuda import cudnn_table  # noqa: E402
from memtrace.tracer.devices.cuda.cudnn_table import ConvKey  # noqa: E402
from memtrace.tracer.devices.cuda.rnn import GATES, RnnShape  # noqa: E402

ZOO_CNNS = ("seed_cnn", "resnet_block", "depthwise", "groupnorm_unet")
TORCHVISION = ("resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "vit_b_16")
SEED_SIZES = ((144, 256), (360, 640), (720, 1280), (1080, 1920))
CHANNELS_LAST = ("convnext_tiny",)  # models whose users commonly run channels-last


def _load(path: Path, func: str) -> Callable[..., nn.Module]:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    builder: Callable[..., nn.Module] = getattr(mod, func)
    return builder


class _WithTimestep(nn.Module):
    """The diffusion U-Net called with the image only (timestep 0)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> Any:
        return self.inner(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))


def models() -> Iterator[tuple[str, Callable[[], nn.Module], tuple[int, ...], bool]]:
    """(name, builder, one image's C x H x W, channels-last) of each model whose convolutions are measured."""
    from zoo import ZOO_BY_NAME

    for name in ZOO_CNNS:
        case = ZOO_BY_NAME[name]
        yield f"zoo/{name}", case.build, tuple(case.inputs[0][0][1:]), False
    unet = REPO / "benchmarks" / "models" / "unet.py"
    yield "unet_small", _load(unet, "small"), (3, 64, 64), False
    yield "unet_diffusion", lambda: _WithTimestep(_load(unet, "diffusion")()), (3, 32, 32), False
    seed = REPO / "benchmarks" / "models" / "seed_cnn.py"
    for h, w in SEED_SIZES:
        yield f"seed_cnn_{h}p", (lambda h=h, w=w: _load(seed, "build")(h=h, w=w)), (3, h, w), False
    try:
        import torchvision
    except Exception:  # torchvision missing or built for another torch
        return
    for name in TORCHVISION:
        yield name, getattr(torchvision.models, name), (3, 224, 224), False
        if name in CHANNELS_LAST:
            yield f"{name}/channels_last", getattr(torchvision.models, name), (3, 224, 224), True


def conv_shapes(
    build: Callable[[], nn.Module], image: tuple[int, ...], batch: int, nhwc: bool
) -> list[dict[str, Any]]:
    """Each convolution's input shape and parameters, found by running the model on meta."""
    with torch.device("meta"):
        model = build()
    found: list[dict[str, Any]] = []

    def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)) and isinstance(x, torch.Tensor):
            shapes = {"x": tuple(x.shape), "w": tuple(mod.weight.shape)}
            params = {"stride": mod.stride, "padding": mod.padding, "dilation": mod.dilation}
            found.append({**shapes, **params, "groups": mod.groups, "nhwc": nhwc and x.dim() == 4})

    handles = [
        m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))
    ]
    x = torch.empty(batch, *image, device="meta")
    if nhwc:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:  # a model that does not run on meta: its calls are left out, said once
        print(f"  skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
    for h in handles:
        h.remove()
    return found


def _padding(p: Any) -> tuple[int, ...]:
    if isinstance(p, str):
        raise ValueError("string padding")
    return tuple(int(v) for v in p)


def keys_of(call: dict[str, Any], dtype: str) -> list[ConvKey]:
    x, w = call["x"], call["w"]
    if len(x) == 3:
        x, w = (x[0], x[1], 1, x[2]), (w[0], w[1], 1, w[2])
        two = lambda v: (1, int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))  # noqa: E731
        s, p, d = two(call["stride"]), (0, _padding(call["padding"])[0]), two(call["dilation"])
    else:
        s, p, d = tuple(call["stride"]), _padding(call["padding"]), tuple(call["dilation"])
    layout = "nhwc" if call["nhwc"] else "nchw"
    return [
        ConvKey(pass_, dtype, layout, x[0], x[1], x[2], x[3], w[0], w[2], w[3], s, p, d, call["groups"])  # type: ignore[arg-type]
        for pass_ in cudnn_table.PASSES
    ]


def measure(key: ConvKey) -> int:
    """The workspace of one call: the allocator's peak during it minus what is left allocated after it."""
    dtype = getattr(torch, key.dtype)
    fmt = torch.channels_last if key.layout == "nhwc" else torch.contiguous_format
    x = torch.randn(key.n, key.c, key.h, key.w, device="cuda", dtype=dtype).to(memory_format=fmt)
    w = torch.randn(key.o, key.c // key.groups, key.kh, key.kw, device="cuda", dtype=dtype).to(
        memory_format=fmt
    )
    args = (list(key.stride), list(key.padding), list(key.dilation), False, [0, 0], key.groups)
    ho, wo = key.output_hw()
    gy = torch.randn(key.n, key.o, ho, wo, device="cuda", dtype=dtype).to(memory_format=fmt)

    def call() -> Any:
        if key.pass_ == "fwd":
            return torch.ops.aten.convolution(x, w, None, *args)
        mask = [key.pass_ == "bwd_data", key.pass_ == "bwd_filter", False]
        return torch.ops.aten.convolution_backward(gy, x, w, None, *args, mask)

    out = call()
    del out
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    out = call()
    torch.cuda.synchronize()
    workspace = torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()
    del out
    return int(workspace)


RNN_MODES = {"rnn_relu": 0, "rnn_tanh": 1, "lstm": 2, "gru": 3}  # cudnnRNNMode_t
RNN_KIND = "memtrace-cudnn-rnn-spaces"


def packed_batch_sizes(seq: int, batch: int) -> list[int]:
    """`batch_sizes` of a packed batch whose lengths fall evenly from `seq` to `seq // 2` (sorted, as
    `pack_padded_sequence` sorts them): at step t, the number of sequences longer than t."""
    lengths = [seq - (seq // 2) * i // max(1, batch - 1) if batch > 1 else seq for i in range(batch)]
    return [sum(n > t for n in lengths) for t in range(seq)]


def _sub_grid(dtypes: list[str]) -> list[tuple[RnnShape, int, str]]:
    """The variants tracer/devices/cuda/rnn.py now models, on a smaller grid: nn.RNN (tanh, relu), the
    LSTM's projection (proj_size = hidden / 2) and packed input (LSTM, GRU)."""
    grid = []
    for layers, hidden, batch, seq, dirs, dtype in itertools.product(
        (1, 2), (128, 512), (8, 32), (32, 256), (1, 2), dtypes
    ):
        geo = (seq, batch, hidden, layers, dirs, 0)
        tokens = sum(packed_batch_sizes(seq, batch))
        shapes = [
            RnnShape("rnn_tanh", *geo),
            RnnShape("rnn_relu", *geo),
            RnnShape("lstm", *geo, proj=hidden // 2),
        ]
        shapes += [RnnShape(k, *geo, tokens=tokens) for k in ("lstm", "gru")]
        grid += [(shape, hidden // 2 if hidden > 128 else 64, dtype) for shape in shapes]
    return grid


def rnn_shapes(dtypes: list[str]) -> list[tuple[RnnShape, int, str]]:
    """(shape, input size, dtype) of the grid, smallest first; the zoo's LSTM (2 layers, 128, 8x32x64)
    among them, then `_sub_grid`'s nn.RNN, projected and packed variants."""
    grid = [
        (RnnShape(kind, seq, batch, hidden, layers, dirs, 0), hidden // 2 if hidden > 128 else 64, dtype)
        for kind in ("lstm", "gru") for layers in (1, 2, 4) for hidden in (128, 256, 512, 1024)
        for batch in (1, 8, 32) for seq in (16, 32, 256) for dirs in (1, 2) for dtype in dtypes
    ]  # fmt: skip
    grid += _sub_grid(dtypes)
    return sorted(
        grid, key=lambda g: (g[0].seq * g[0].batch * g[0].hidden * g[0].layers * g[0].directions, str(g))
    )


def _rnn_params(shape: RnnShape, input_size: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Per layer and direction, in PyTorch's order: w_ih, w_hh, b_ih, b_hh and, with a projection, w_hr."""
    gates = GATES[shape.kind] * shape.hidden
    params = []
    for layer in range(shape.layers):
        size = input_size if layer == 0 else shape.out * shape.directions
        for _ in range(shape.directions):
            for rows, cols in ((gates, size), (gates, shape.out)):
                params.append(torch.randn(rows, cols, device="cuda", dtype=dtype) * 0.01)
            params += [torch.zeros(gates, device="cuda", dtype=dtype) for _ in range(2)]
            if shape.proj:
                params.append(torch.randn(shape.proj, shape.hidden, device="cuda", dtype=dtype) * 0.01)
    return params


def measure_rnn(shape: RnnShape, input_size: int, dtype_name: str) -> dict[str, Any]:
    """One shape's reserve (training), workspace (training and inference) and backward scratch, in bytes.
    A packed shape (`tokens`) runs on a 2-D input with `packed_batch_sizes`."""
    dtype = getattr(torch, dtype_name)
    s = shape
    stride = 5 if s.proj else 4
    params = [p.requires_grad_() for p in _rnn_params(s, input_size, dtype)]
    buf = torch._cudnn_rnn_flatten_weight(
        params, stride, input_size, RNN_MODES[s.kind], s.hidden, s.proj, s.layers, False, s.directions == 2
    )
    sizes = packed_batch_sizes(s.seq, s.batch) if s.tokens else []
    lead = (sum(sizes),) if s.tokens else (s.seq, s.batch)
    x = torch.randn(*lead, input_size, device="cuda", dtype=dtype, requires_grad=True)
    hx = torch.zeros(s.layers * s.directions, s.batch, s.out, device="cuda", dtype=dtype)
    cx = torch.zeros(s.layers * s.directions, s.batch, s.hidden, device="cuda", dtype=dtype)
    cx = cx if s.kind == "lstm" else None

    def call(train: bool) -> tuple[torch.Tensor, ...]:
        return torch._cudnn_rnn(
            x, params, stride, buf, hx, cx, RNN_MODES[s.kind], s.hidden, s.proj, s.layers, False, 0.0, train,
            s.directions == 2, sizes, None,
        )  # fmt: skip

    found: dict[str, Any] = {}
    for train in (True, False):
        with torch.set_grad_enabled(train):
            call(train)  # warm-up: the handle, the descriptors
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            outs = call(train)
            torch.cuda.synchronize()
            found["train" if train else "infer"] = {
                "reserve_bytes": outs[3].numel(),
                "workspace_bytes": torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated(),
            }
            if train:
                grads = [torch.ones_like(outs[0]), torch.ones_like(outs[1])]
                grads += [torch.ones_like(outs[2])] if cx is not None else []
                tensors = [outs[0], outs[1]] + ([outs[2]] if cx is not None else [])
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                reserve = outs[3].numel()
                del outs
                got = torch.autograd.grad(tensors, [x, *params], grads)
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()
                found["backward_scratch_bytes"] = max(0, peak - reserve)
                del got, tensors, grads
            else:
                del outs
    return found


def _rnn_entry(shape: RnnShape, input_size: int, dtype: str, found: dict[str, Any]) -> dict[str, Any]:
    sized = dataclasses.replace(shape, itemsize=getattr(torch, dtype).itemsize)
    (rlow, rhigh), (wlow, whigh) = sized.reserve(), sized.workspace()
    spaces = (
        found["train"]["workspace_bytes"],
        found["infer"]["workspace_bytes"],
        found["backward_scratch_bytes"],
    )
    return {
        "kind": shape.kind, "layers": shape.layers, "hidden": shape.hidden, "batch": shape.batch,
        "seq": shape.seq, "directions": shape.directions, "input": input_size, "dtype": dtype,
        "proj": shape.proj, "tokens": shape.tokens, **found,
        "reserve_in_range": rlow <= found["train"]["reserve_bytes"] <= rhigh,
        "workspace_in_range": all(wlow <= b <= whigh for b in spaces),
    }  # fmt: skip


def collect_rnn(budget: float, dtypes: list[str], out: Path) -> None:
    """--rnn: measure the grid within the budget and write the table (--rnn-out)."""
    start, entries, grid, stopped = time.monotonic(), [], rnn_shapes(dtypes), ""
    for i, (shape, input_size, dtype) in enumerate(grid):
        if time.monotonic() - start > budget:
            stopped = f"budget of {budget:.0f} s reached after {i} of {len(grid)} shapes"
            break
        try:
            entries.append(_rnn_entry(shape, input_size, dtype, measure_rnn(shape, input_size, dtype)))
        except torch.OutOfMemoryError:
            pass
        except RuntimeError as exc:  # a shape or dtype cuDNN refuses: left out, said
            print(f"{shape} {dtype}: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
        torch.cuda.empty_cache()
    major, minor = torch.cuda.get_device_capability()
    table = {
        "compute_capability": f"{major}.{minor}", "cudnn_version": int(torch.backends.cudnn.version() or 0),
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
        "measured": time.strftime("%Y-%m-%d"), "stopped": stopped or "all shapes measured",
        "entries": entries,
    }  # fmt: skip
    data: dict[str, Any] = {"schema": 1, "kind": RNN_KIND, "tables": []}
    if out.exists():
        data = json.loads(out.read_text())
    same = ("compute_capability", "cudnn_version")
    data["tables"] = [t for t in data["tables"] if any(t.get(f) != table[f] for f in same)] + [table]
    out.write_text(json.dumps(data, indent=1) + "\n")
    held = sum(e["reserve_in_range"] and e["workspace_in_range"] for e in entries)
    print(f"{len(entries)} RNN shapes measured ({table['stopped']}), {held} in the rule's range -> {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=cudnn_table.DEFAULT_PATH)
    ap.add_argument("--budget", type=float, default=480.0, help="seconds of measuring before it stops")
    ap.add_argument("--benchmark", action="store_true", help="cudnn.benchmark on (a second table)")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--dtypes", default="float32,bfloat16,float16")
    ap.add_argument("--filter", default="")
    ap.add_argument("--list", action="store_true", help="print the calls and stop (no GPU needed)")
    ap.add_argument("--rnn", action="store_true", help="measure cuDNN's RNN reserve and workspace instead")
    ap.add_argument("--rnn-out", type=Path, default=REPO / "benchmarks" / "results" / "cudnn-rnn-spaces.json")
    a = ap.parse_args()
    if not a.list and not torch.cuda.is_available():
        print("collect_cudnn: skipped: no CUDA device here (--list prints the calls)", file=sys.stderr)
        return
    if a.rnn:
        if a.list:
            for shape, input_size, dtype in rnn_shapes(a.dtypes.split(",")):
                print(shape, input_size, dtype)
            return
        collect_rnn(a.budget, a.dtypes.split(","), a.rnn_out)
        return
    start = time.monotonic()
    keys: dict[ConvKey, str] = {}
    for name, build, image, nhwc in models():
        if a.filter and a.filter not in name:
            continue
        for batch in (int(b) for b in a.batches.split(",")):
            for call in conv_shapes(build, image, batch, nhwc):
                for dtype in a.dtypes.split(","):
                    try:
                        for k in keys_of(call, dtype):
                            keys.setdefault(k, name)
                    except ValueError:
                        continue
    order = sorted(keys, key=lambda k: (k.operand_elems(), k.text()))
    print(f"{len(order)} calls from {len(set(keys.values()))} models", file=sys.stderr)
    if a.list:
        for k in order:
            print(k.text(), keys[k])
        return
    torch.backends.cudnn.benchmark = a.benchmark
    entries: list[dict[str, Any]] = []
    stopped = ""
    for i, k in enumerate(order):
        if time.monotonic() - start > a.budget:
            stopped = f"budget of {a.budget:.0f} s reached after {i} of {len(order)} calls"
            break
        try:
            entries.append({"key": k.text(), "bytes": measure(k), "model": keys[k]})
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
        except RuntimeError as exc:  # a shape cuDNN refuses: left out, said
            print(f"{k.text()}: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
        torch.cuda.empty_cache()
    major, minor = torch.cuda.get_device_capability()
    table = {
        "compute_capability": f"{major}.{minor}", "cudnn_version": int(torch.backends.cudnn.version() or 0),
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "benchmark": a.benchmark,
        "measured": time.strftime("%Y-%m-%d"), "stopped": stopped or "all calls measured", "entries": entries,
    }  # fmt: skip
    data: dict[str, Any] = {"schema": cudnn_table.SCHEMA, "kind": cudnn_table.KIND, "tables": []}
    if a.out.exists():
        data = json.loads(a.out.read_text())
    same = ("compute_capability", "cudnn_version", "benchmark")
    data["tables"] = [t for t in data["tables"] if any(t.get(f) != table[f] for f in same)] + [table]
    a.out.write_text(json.dumps(data, indent=1) + "\n")
    cudnn_table.parse_tables(data, str(a.out))  # what was written reads back
    print(f"{len(entries)} workspaces measured ({table['stopped']}) -> {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
