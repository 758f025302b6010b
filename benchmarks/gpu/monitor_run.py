"""A short real training run on this machine's GPU with `memtrace.monitor`: the predicted peak of the step
beside `torch.cuda.max_memory_allocated()` every few steps; prints one JSON object, writes the monitor files.

python benchmarks/gpu/monitor_run.py --out DIR

Cases: the seed CNN in a plain loop (fp32 Adam, then bf16 autocast with AdamW), and a small GPT-2 through the
Hugging Face Trainer with `MemtraceCallback` (skipped without transformers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.models import hf_gpt2, seed_cnn  # noqa: E402
from memtrace.monitor import MemoryMonitor  # noqa: E402


def _rows(mon: MemoryMonitor) -> list[dict[str, Any]]:
    return [r.to_json() for r in mon.history]


def plain_loop(out: Path, amp: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    model = seed_cnn.build().cuda()
    opt: torch.optim.Optimizer = (
        torch.optim.AdamW(model.parameters(), lr=1e-4)
        if amp
        else torch.optim.Adam(model.parameters(), lr=1e-4)
    )
    x = torch.randn(32, 3, 144, 256, device="cuda")
    y = torch.randint(0, 10, (32,), device="cuda")
    mon = MemoryMonitor(model, opt, every=4, amp="bf16" if amp else None, loss="ce")

    def step() -> None:  # a function: its locals die when it returns, as in the simulated step
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(12):
        step()
        torch.cuda.synchronize()
        mon.step(x)
    name = "seed_cnn_bf16" if amp else "seed_cnn_fp32"
    mon.to_json(out / f"monitor_{name}.json")
    return {"case": name, "rows": _rows(mon)}


def trainer_run(out: Path) -> dict[str, Any]:
    try:
        import transformers
    except ImportError:
        return {"case": "hf_gpt2_trainer", "skipped": "transformers not installed"}
    from memtrace.integrations.transformers import MemtraceCallback

    torch.manual_seed(0)
    model = hf_gpt2.build()
    data = [{"input_ids": t, "labels": t.clone()} for t in torch.randint(0, 1000, (256, 128))]
    args = transformers.TrainingArguments(
        output_dir=str(out / "hf"),
        report_to=[],
        max_steps=12,
        logging_steps=4,
        per_device_train_batch_size=8,
        save_strategy="no",
        disable_tqdm=True,
        bf16=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    callback = MemtraceCallback(output=out / "monitor_hf_gpt2.json").install(trainer)
    trainer.train()
    keys = ("step", "memtrace/predicted_peak", "memtrace/measured_peak", "memtrace/reserved")
    logged = [{k: h.get(k) for k in keys} for h in trainer.state.log_history if "loss" in h]
    rows = _rows(callback.monitor) if callback.monitor is not None else []
    return {"case": "hf_gpt2_trainer", "rows": rows, "log_history": logged}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for case in (lambda: plain_loop(out, False), lambda: plain_loop(out, True), lambda: trainer_run(out)):
        start = time.time()
        try:
            results.append({**case(), "seconds": round(time.time() - start, 1)})
        except Exception as exc:  # one failing case must not hide the others
            results.append({"error": f"{type(exc).__name__}: {exc}"})
        torch.cuda.empty_cache()
    print(
        json.dumps(
            {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": results}, indent=1
        )
    )


if __name__ == "__main__":
    main()
