"""Record the CPU allocator's events of one training or inference step, op by op, on this machine.

Usage: python benchmarks/record_cpu_events.py MODULE.py:FUNC --input SPEC [--input SPEC] [--amp bf16]
       [--mode train|infer|no_grad] [--loss mse|ce]
Writes one JSON object to stdout: the machine (CPU flags, torch, oneDNN ISA), then for the second step every
allocation and free in order: [op, bytes (negative for a free), event index]. The op is the innermost ATen op
around the event. Sizes are what the allocator was asked for."""

import argparse
import importlib.util
import json

import torch
import torch.nn.functional as F
from recording_machine import machine
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile


def load(target):
    path, func = target.split(":")
    spec = importlib.util.spec_from_file_location("m", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, func)()


def tensor(spec):
    shape, _, dt = spec.partition(":")
    dims = [int(d) for d in shape.split("x")]
    return torch.randint(0, 32, dims) if dt == "int64" else torch.randn(*dims)


def events(fn):
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    out = []

    def walk(nodes, op):
        for n in nodes:
            if n.tag == _EventType.Allocation:
                out.append((n.start_time_ns, op, n.extra_fields.alloc_size))
            walk(n.children, n.name if n.tag == _EventType.TorchOp else op)

    walk(prof.profiler.kineto_results.experimental_event_tree(), "-")
    out.sort()
    return [[op, size, i] for i, (_, op, size) in enumerate(out)]


ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--input", action="append", default=[])
ap.add_argument("--amp")
ap.add_argument("--mode", default="train")
ap.add_argument("--loss", default="sum")
a = ap.parse_args()
torch.manual_seed(0)
model = load(a.model)
xs = [tensor(s) for s in a.input]
opt = torch.optim.Adam(model.parameters(), foreach=False)


def step():
    ctx = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if a.amp == "bf16"
        else torch.autocast("cpu", enabled=False)
    )
    if a.mode in ("infer", "no_grad"):
        model.eval()
        with torch.inference_mode() if a.mode == "infer" else torch.no_grad(), ctx:
            model(*xs)
        return
    with ctx:
        out = model(*xs)
        out = out if torch.is_tensor(out) else out[0]
        if a.loss == "mse":
            loss = F.mse_loss(out.float(), torch.zeros_like(out, dtype=torch.float32))
        elif a.loss == "ce":
            o = out.float().flatten(0, -2)
            loss = F.cross_entropy(o, torch.zeros(o.size(0), dtype=torch.long))
        else:
            loss = out.float().sum()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


step()
print(
    json.dumps(
        {
            "model": a.model,
            "inputs": a.input,
            "amp": a.amp,
            "mode": a.mode,
            "loss": a.loss,
            "machine": machine(),
            "events": events(step),
        }
    )
)
