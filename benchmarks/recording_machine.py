"""The machine a recording of CPU allocator events was made on, as the record_* scripts write it: the CPU's
vector flags, torch, its thread count, whether oneDNN is built in, and ATen's vector capability."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch


def cpu_flags() -> list[str]:
    """The CPU's flags that decide the kernels (avx*, amx*, fma, f16c), sorted; none off Linux."""
    if platform.system() != "Linux":
        return []
    flags = Path("/proc/cpuinfo").read_text().split("flags\t\t: ")[1].split("\n")[0].split()
    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16")))


def machine() -> dict[str, Any]:
    """The recording's `machine` record."""
    return {
        "cpu_flags": cpu_flags(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
