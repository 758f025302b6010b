"""nanoGPT's `train.py` loop body as a memtrace step, with its import-time decisions kept as they are:
the dtype from `torch.cuda.is_bf16_supported()`, the device from `torch.cuda.is_available()`, a module-level
`ctx = torch.amp.autocast(...)` and `GradScaler`, gradient clipping, and the loss printed with `.item()`.

    memtrace benchmarks/models/nanogpt.py:build --input 8x1024:int64 --input 8x1024:int64 \\
        --step benchmarks/models/nanogpt_train.py:step --optimizer adamw:fused=true --gpu a100-40gb

memtrace answers these questions for the target GPU (`--device cpu`: no GPU, an fp32 step, as on a CPU
machine).
`step_ctx_inside` is the same step with the autocast written inside it, for comparison.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"
device_type = "cuda" if "cuda" in device else "cpu"
ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
ctx: Any = (
    nullcontext() if device_type == "cpu" else torch.amp.autocast(device_type=device_type, dtype=ptdtype)
)
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16" and device_type == "cuda"))
gradient_accumulation_steps = 1
grad_clip = 1.0


def _update(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def step(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], optimizer: Any) -> None:
    """One iteration of train.py: forward and backward under `ctx`, clip, step, log."""
    x, y = (t.to(device) for t in batch)
    for _ in range(gradient_accumulation_steps):
        with ctx:
            _, loss = model(x, y)
            loss = loss / gradient_accumulation_steps
        scaler.scale(loss).backward()
    _update(model, optimizer)
    lossf = loss.item() * gradient_accumulation_steps
    print(f"loss {lossf:.4f}")


def step_ctx_inside(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], optimizer: Any) -> None:
    """The same step with its autocast made inside it, where PyTorch never disables it."""
    x, y = (t.to(device) for t in batch)
    amp = torch.amp.autocast(device_type, dtype=ptdtype) if device_type == "cuda" else nullcontext()
    for _ in range(gradient_accumulation_steps):
        with amp:
            _, loss = model(x, y)
            loss = loss / gradient_accumulation_steps
        scaler.scale(loss).backward()
    _update(model, optimizer)


def step_fp32(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], optimizer: Any) -> None:
    """The same step with no autocast: what the module-level `ctx` gave before memtrace kept it."""
    x, y = (t.to(device) for t in batch)
    _, loss = model(x, y)
    scaler.scale(loss / gradient_accumulation_steps).backward()
    _update(model, optimizer)
