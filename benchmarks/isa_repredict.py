"""Predict the cases of a CPU table recorded on another machine, with this process simulating that machine's
ISA (its CPU flags, ATen capability and threads: tests/test_rules_isa.py's `forced_isa`).

Usage: python benchmarks/isa_repredict.py tests/data/cpu-avx512-bf16/unet_small-bf16-infer.json > out.jsonl
(the first argument gives the machine; every case of the table is predicted, one JSON line each).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_rules_isa import forced_isa  # noqa: E402

from memtrace.tracer import simulate as sim  # noqa: E402

CASES = {
    "unet_small": ("unet.py:small", ["4x3x64x64"], "mse"),
    "unet_diffusion": ("unet.py:diffusion", ["2x3x32x32", "2:int64"], "mse"),
    "seed_cnn": ("seed_cnn.py:build", ["2x3x144x256"], "ce"),
    "gpt2": ("hf_gpt2.py:build", ["4x128:int64"], None),
    "llama": ("hf_llama.py:build", ["2x128:int64"], None),
    "lstm": ("lstm_tagger.py:build", ["4x32:int64"], "ce"),
}


def main() -> None:
    machine = json.loads(Path(sys.argv[1]).read_text())["machine"]
    only = set(sys.argv[2:])
    with forced_isa(machine):
        for name, (target, inputs, loss) in CASES.items():
            if only and name not in only:
                continue
            for amp in (None, "bf16"):
                for mode in ("train", "infer"):
                    req = sim.request(
                        str(ROOT / "benchmarks" / "models" / target), inputs, mode=mode, device="cpu",
                        amp=amp, loss=loss,
                    )  # fmt: skip
                    peak = sim.run(req).peak.bytes
                    row = {"case": name, "precision": amp or "fp32", "mode": mode, "predicted": peak}
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
