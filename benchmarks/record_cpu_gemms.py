"""Record the CPU matrix multiplies of one measured step and what the allocator saw inside each.

Usage: python benchmarks/record_cpu_gemms.py MODEL.py:FUNC --input SPEC [--arg K=V ...] [--amp bf16]
       [--optimizer NAME] [--compile]
The step is measured as `memtrace verify --device cpu` measures it (tracer/real/measure.py), with the
profiler also recording the ops' input shapes. Writes one JSON object to stdout: the machine (CPU flags,
torch, threads, ATen capability, per-core L1d/L2 sizes as oneDNN reads them), then every
`aten::mm`/`addmm`/`bmm`/`baddbmm` of the steady-state step with its tensor arguments (sizes, strides, dtype;
an `out=` call lists the out buffer last) and the signed sizes of the allocations and frees made inside it
(the oneDNN scratchpad, any operand copy). A compiled step's GEMMs are inductor's
`extern_kernels.mm(a, b, out=buf)` calls."""

import argparse
import json

import torch
from recording_machine import machine
from torch._C._profiler import _EventType

from memtrace.tracer.devices.cpu import gemm_lowp
from memtrace.tracer.real.measure import measure_request
from memtrace.tracer.simulate import request

GEMMS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def gemms(prof):
    out = []

    def walk(nodes):
        for n in nodes:
            if n.tag == _EventType.TorchOp and n.name in GEMMS:
                args = [
                    {"sizes": list(t.sizes), "strides": list(t.strides), "dtype": str(t.dtype)}
                    for t in n.extra_fields.inputs
                    if isinstance(t, torch._C._profiler._TensorMetadata)
                ]
                events = [c.extra_fields.alloc_size for c in n.children if c.tag == _EventType.Allocation]
                out.append({"op": n.name, "args": args, "events": events})
            walk(n.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    return out


ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--input", action="append", default=[])
ap.add_argument("--arg", action="append", default=[])
ap.add_argument("--amp")
ap.add_argument("--optimizer", default="adam")
ap.add_argument("--compile", action="store_true")
a = ap.parse_args()
kwargs = {k: int(v) if v.isdigit() else v for k, v in (s.split("=", 1) for s in a.arg)}
req = request(
    a.model, tuple(a.input), args=kwargs, amp=a.amp, optimizer=a.optimizer, device="cpu",
    compile_model=a.compile,
)  # fmt: skip
profiled = []
real_profile = torch.profiler.profile


def recording(*args, **kw):
    p = real_profile(*args, record_shapes=True, **kw)
    profiled.append(p)
    return p


torch.profiler.profile = recording  # the measured step's profiler, with the ops' shapes
measured = measure_request(req)
torch.profiler.profile = real_profile
print(
    json.dumps(
        {
            "model": a.model,
            "inputs": a.input,
            "args": kwargs,
            "amp": a.amp,
            "optimizer": a.optimizer,
            "compile": a.compile,
            "machine": {**machine(), "caches": gemm_lowp._cache_sizes()},
            "measured_peak": measured.peak,
            "gemms": gemms(profiled[-1]),
        }
    )
)
