"""The user's step against the CPU allocator: the output held or freed, losses, a user step, inference modes.

.venv/bin/python benchmarks/step_accuracy.py

Each row simulates on meta (--device cpu) and measures the same step on real CPU tensors (tests/reference.py).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

STEP = """
import torch
import torch.nn.functional as F

def step(model, inputs, optimizer):
    (ids,) = inputs
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(ids.cuda())
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
"""


def _rows(step_file: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    from memtrace.tracer.core.specs import LossSpec
    from memtrace.tracer.engine.recipes import Recipe

    return [
        ("transformer_sdpa", "train", "output held (default)", {}),
        ("transformer_sdpa", "train", "--free-output", {"free_output": True}),
        ("transformer_sdpa", "train", "--loss ce", {"loss": LossSpec("ce")}),
        (
            "transformer_sdpa",
            "train",
            "--loss ce --amp bf16",
            {"loss": LossSpec("ce"), "recipe": Recipe("bf16")},
        ),
        ("mlp", "train", "--loss ce", {"loss": LossSpec("ce")}),
        ("groupnorm_unet", "train", "--loss mse", {"loss": LossSpec("mse")}),
        ("groupnorm_unet", "train", "--loss ce (dim 1)", {"loss": LossSpec("ce")}),
        ("transformer_sdpa", "train", f"--step {Path(step_file).name}", {"step": step_file}),
        ("mlp", "infer", "--amp bf16 (inference_mode)", {"recipe": Recipe("bf16")}),
        ("mlp", "no_grad", "--amp bf16 (no_grad)", {"recipe": Recipe("bf16")}),
        ("transformer_sdpa", "infer", "--amp bf16 (inference_mode)", {"recipe": Recipe("bf16")}),
    ]


def main() -> None:
    from accuracy import compare_config
    from zoo import ZOO_BY_NAME

    from memtrace.tracer.core.specs import parse_optimizer
    from memtrace.tracer.simulate import Config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "user_step.py"
        path.write_text(STEP)
        print("| model | mode | step | predicted | measured | error |\n|---|---|---|---:|---:|---:|")
        for name, mode, label, fields in _rows(f"{path}:step"):
            config = Config(mode, parse_optimizer("adam"), "cpu", **fields)
            cmp = compare_config(ZOO_BY_NAME[name], config)
            err = f"{100 * cmp.error:+.4f}%"
            print(f"| {name} | {mode} | {label} | {cmp.predicted:,} | {cmp.measured:,} | {err} |")


if __name__ == "__main__":
    main()
