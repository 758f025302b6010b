"""Check the items of benchmarks/results/cuda-facts.md on the GPU of this machine; print one JSON object.

python benchmarks/gpu/cuda_facts.py > facts.json

Each fact is measured in a fresh process where the allocator's state matters (the cuBLAS workspaces live
for the process), and set beside what memtrace's CUDA model says for this GPU's compute capability.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

_WORKSPACE_PROBE = """
import json, torch
torch.cuda.init()
x = torch.randn(7, 7, device="cuda")
torch._C._cuda_clearCublasWorkspaces()
torch.cuda.synchronize()
before = torch.cuda.memory_stats()["active_bytes.all.allocated"]
with torch.no_grad():
    torch.matmul(x, x)
torch.cuda.synchronize()
after = torch.cuda.memory_stats()["active_bytes.all.allocated"]
size = getattr(torch.backends.cuda, "cublas_workspace_size", None)
print(json.dumps({"matmul_workspace": after - before, "cublas_workspace_size": size() if size else None}))
"""

_MLP_PROBE = """
import json, torch
from torch import nn
m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).cuda()
x = torch.randn(32, 64, device="cuda")
opt = torch.optim.SGD(m.parameters(), lr=0.1)
torch._C._cuda_clearCublasWorkspaces()
torch.cuda.synchronize()
base = torch.cuda.memory_allocated()
params = sum(p.numel() * p.element_size() for p in m.parameters())
rows = []
for step in range(2):
    m(x).sum().backward()
    opt.step()
    torch.cuda.synchronize()
    rows.append(torch.cuda.memory_allocated() - base)
print(json.dumps({"after_steps": rows, "params": params, "grads": params}))
"""


def _probe(code: str, env: dict[str, str] | None = None) -> Any:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _environment() -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(0)
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "gpu": props.name,
        "capability": f"{props.major}.{props.minor}",
        "sms": props.multi_processor_count,
        "total_memory": props.total_memory,
    }


def _workspace_facts(arch: str) -> dict[str, Any]:
    from memtrace.tracer.devices.cuda import cublas_workspace as cw

    custom = {"CUBLAS_WORKSPACE_CONFIG": ":128:8:64:16:32:32"}
    return {
        "15_default": {"measured": _probe(_WORKSPACE_PROBE), "model": cw.cublas_bytes(arch, {})},
        "15_config": {"measured": _probe(_WORKSPACE_PROBE, custom), "model": cw.cublas_bytes(arch, custom)},
        "16_mlp_unified": {
            "measured": _probe(_MLP_PROBE),
            "model_workspaces": 2 * cw.cublas_bytes(arch, {}),
        },
        "17_mlp_lt_not_unified": {
            "measured": _probe(_MLP_PROBE, {"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "0"}),
            "model_workspaces": cw.cublaslt_bytes(arch, {"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "0"})
            + cw.cublas_bytes(arch, {}),
        },
    }


_SDPA_SHAPES: dict[str, dict[str, Any]] = {
    "bf16_causal_1x32x4096x128": {},
    "bf16_boolmask": {"mask": True},
    "fp32": {"dtype": "float32"},
    "bf16_hd256_dropout": {"dim": 256, "dropout": 0.1},
    "bf16_gqa8": {"kv_heads": 8, "gqa": True},
    "bf16_mqa_no_gqa_flag": {"kv_heads": 1, "gqa": False},
    "fp32_mask_gqa8": {"dtype": "float32", "mask": True, "kv_heads": 8, "gqa": True},
    "bf16_infer_splitkv_1x8x64x4096": {"heads": 8, "seq": 64, "kv_seq": 4096, "dim": 64, "grad": False},
}
_NAMES = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


def _sdpa_choice(env: dict[str, Any]) -> dict[str, Any]:
    import torch

    from memtrace.tracer.devices.cuda import sdp_choice as sc

    gpu = sc.Gpu(env["capability"], env["cudnn"] or sc.DEFAULT_CUDNN_VERSION, env["cuda"] or "12.8")
    out: dict[str, Any] = {}
    for name, o in _SDPA_SHAPES.items():
        heads, seq, dim = o.get("heads", 32), o.get("seq", 4096), o.get("dim", 128)
        kv, kv_seq = o.get("kv_heads", heads), o.get("kv_seq", seq)
        dtype = getattr(torch, o.get("dtype", "bfloat16"))
        grad = o.get("grad", True)
        q = torch.empty(1, heads, seq, dim, dtype=dtype, device="cuda", requires_grad=grad)
        k = torch.empty(1, kv, kv_seq, dim, dtype=dtype, device="cuda", requires_grad=grad)
        v = torch.empty(1, kv, kv_seq, dim, dtype=dtype, device="cuda", requires_grad=grad)
        mask = torch.ones(seq, kv_seq, dtype=torch.bool, device="cuda") if o.get("mask") else None
        causal = mask is None and seq == kv_seq
        p = o.get("dropout", 0.0)
        try:
            real = _NAMES.get(
                torch._fused_sdp_choice(q, k, v, mask, p, causal, enable_gqa=o.get("gqa", False))
            )
        except Exception as exc:  # the choice raises when no backend fits
            real = f"error: {str(exc).splitlines()[0]}"

        def operand(t: torch.Tensor, grad: bool = grad) -> sc.Operand:
            name = str(t.dtype).split(".")[-1]
            return sc.Operand(tuple(t.shape), tuple(t.stride()), name, t.element_size(), 0, grad)

        call = sc.Call(
            operand(q),
            operand(k),
            operand(v),
            operand(mask) if mask is not None else None,
            p,
            causal,
            o.get("gqa", False),
        )
        model = sc.choose(call, gpu)
        out[name] = {"measured": real, "model": model.backend, "rejected": model.rejected}
    return out


def main() -> None:
    env = _environment()
    facts: dict[str, Any] = {"env": env}
    for key, fn in (
        ("workspace", lambda: _workspace_facts(env["capability"])),
        ("sdpa_choice", lambda: _sdpa_choice(env)),
    ):
        try:
            facts[key] = fn()
        except Exception as exc:
            facts[key] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(facts, indent=1, default=str))


if __name__ == "__main__":
    main()
